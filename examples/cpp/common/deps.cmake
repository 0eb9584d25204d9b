# What resdsl_manifest.hpp needs, shared by the C++ examples: nlohmann/json (manifest.json) and OpenSSL's
# SHA-256 (the files' hashes). Link them with nlohmann_json::nlohmann_json OpenSSL::Crypto.
find_package(nlohmann_json 3.2 QUIET)
find_package(OpenSSL QUIET COMPONENTS Crypto)
if(NOT nlohmann_json_FOUND OR NOT OpenSSL_FOUND)
  message(FATAL_ERROR
    "nlohmann/json (found: ${nlohmann_json_FOUND}) and OpenSSL (found: ${OpenSSL_FOUND}) are needed to read "
    "manifest.json and check SHA-256 hashes. Install them: apt-get install nlohmann-json3-dev libssl-dev "
    "(Debian/Ubuntu), brew install nlohmann-json openssl (macOS), or vcpkg install nlohmann-json openssl.")
endif()
