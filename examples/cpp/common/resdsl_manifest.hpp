// What both C++ examples need from a resdsl artefact directory: manifest.json read with nlohmann/json, the
// input/output tensors it describes, and each file's SHA-256 (OpenSSL) checked against the manifest before
// anything deserializes it, as resdsl.runtime.load does.
// Packages: nlohmann-json3-dev and libssl-dev (Debian/Ubuntu), nlohmann-json and openssl (Homebrew, vcpkg).
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace resdsl {

using Json = nlohmann::json;

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open it");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// manifest[key], or an error that says what is missing and what to do.
inline const Json& at(const Json& j, const std::string& key) {
  if (!j.is_object() || !j.contains(key))
    throw std::runtime_error("manifest.json: key '" + key + "' is missing; compile the artefact again");
  return j.at(key);
}

// manifest[key] as a string (or a number), with the same kind of error.
template <typename T>
T get(const Json& j, const std::string& key) {
  const Json& v = at(j, key);
  try {
    return v.get<T>();
  } catch (const Json::exception&) {
    throw std::runtime_error("manifest.json: key '" + key + "' has the wrong type (" + v.type_name() +
                             "); compile the artefact again");
  }
}

inline Json read_manifest(const std::string& dir) {
  Json m;
  try {
    m = Json::parse(read_file(dir + "/manifest.json"));
  } catch (const Json::parse_error& e) {
    throw std::runtime_error(dir + "/manifest.json is not valid JSON (" + std::string(e.what()) +
                             "); the artefact is damaged: compile it again");
  }
  if (!m.is_object() || !m.contains("schema") || m["schema"] != "resdsl.manifest/1")
    throw std::runtime_error(dir + "/manifest.json: not a resdsl.manifest/1 file; compile the artefact again");
  return m;
}

// One entry of the manifest's "inputs" or "outputs"; a dynamic dimension (a name such as "batch") is -1.
struct TensorInfo {
  std::string name, dtype;
  std::vector<int64_t> shape;
  int64_t numel_per_item() const {  // product of all dimensions but the first
    int64_t n = 1;
    for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
    return n;
  }
};

// Every entry of the manifest's "inputs" or "outputs" (a backbone has one output per feature map), a dimension
// that varies (a name such as "batch" or "conv4_x_height") as -1.
inline std::vector<TensorInfo> tensor_infos(const Json& manifest, const std::string& which) {
  const Json& list = at(manifest, which);
  if (!list.is_array() || list.empty())
    throw std::runtime_error("manifest.json: '" + which + "' is empty; compile the artefact again");
  std::vector<TensorInfo> out;
  for (const Json& t : list) {
    TensorInfo info{get<std::string>(t, "name"), get<std::string>(t, "dtype"), {}};
    for (const Json& d : at(t, "shape")) info.shape.push_back(d.is_number_integer() ? d.get<int64_t>() : -1);
    out.push_back(info);
  }
  return out;
}

// The input, with a height and width that vary (compiled with --size MIN:OPT:MAX) taken at the range's opt.
inline TensorInfo input_info(const Json& manifest) {
  TensorInfo in = tensor_infos(manifest, "inputs").at(0);
  if (in.shape.size() == 4 && (in.shape[2] < 0 || in.shape[3] < 0)) {
    const Json& opt = at(at(manifest, "size"), "opt");
    in.shape[2] = opt.at(0).get<int64_t>();
    in.shape[3] = opt.at(1).get<int64_t>();
  }
  return in;
}

// SHA-256 of a whole file, read in 1 MiB chunks, as lowercase hex.
inline std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open it");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("OpenSSL could not start a SHA-256 digest");
  std::vector<char> buf(1 << 20);
  while (in.read(buf.data(), std::streamsize(buf.size())) || in.gcount() > 0)
    if (EVP_DigestUpdate(ctx.get(), buf.data(), size_t(in.gcount())) != 1)
      throw std::runtime_error("OpenSSL failed while hashing " + path);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &n) != 1) throw std::runtime_error("OpenSSL failed while hashing " + path);
  std::string hex;
  char part[3];
  for (unsigned int i = 0; i < n; ++i) {
    std::snprintf(part, sizeof part, "%02x", digest[i]);
    hex += part;
  }
  return hex;
}

// Refuse a file whose SHA-256 differs from the manifest's, before anything deserializes it.
inline void check_file(const std::string& dir, const Json& manifest, const std::string& name) {
  const std::string want = get<std::string>(at(at(manifest, "files"), name), "sha256");
  const std::string got = sha256_file(dir + "/" + name);
  if (got != want)
    throw std::runtime_error(dir + "/" + name + " does not match the sha256 in manifest.json: it changed after it "
                             "was compiled, so it is not loaded; compile it again");
}

}  // namespace resdsl
