// What both C++ examples need from a resdsl artefact directory, with no dependencies:
// a small JSON reader (enough for manifest.json), the input/output tensors it describes, and SHA-256
// to check a file against the manifest before deserializing it (as resdsl.runtime.load does).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace resdsl {

// A JSON value. Objects keep their keys in order in `keys`, parallel to `items`.
struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  double number = 0;
  std::string str;
  std::vector<std::string> keys;
  std::vector<Json> items;

  const Json* find(const std::string& key) const {
    for (size_t i = 0; i < keys.size(); ++i)
      if (keys[i] == key) return &items[i];
    return nullptr;
  }
  const Json& at(const std::string& key) const {
    const Json* v = kind == Object ? find(key) : nullptr;
    if (!v) throw std::runtime_error("manifest.json: key '" + key + "' is missing; compile the artefact again");
    return *v;
  }
  const Json& at(size_t i) const {
    if (kind != Array || i >= items.size()) throw std::runtime_error("manifest.json: array too short");
    return items[i];
  }
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : s_(text) {}
  Json parse() {
    Json v = value();
    space();
    if (i_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("manifest.json is not valid JSON (" + what + " at byte " + std::to_string(i_) +
                             "); the artefact is damaged: compile it again");
  }
  void space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  char peek() {
    space();
    if (i_ >= s_.size()) fail("unexpected end");
    return s_[i_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  bool literal(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(i_, n, word) != 0) return false;
    i_ += n;
    return true;
  }
  Json value() {
    Json v;
    char c = peek();
    if (c == '{') {
      v.kind = Json::Object;
      ++i_;
      if (peek() == '}') return ++i_, v;
      for (;;) {
        if (peek() != '"') fail("expected a key");
        v.keys.push_back(string());
        expect(':');
        v.items.push_back(value());
        if (peek() == ',') { ++i_; continue; }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Json::Array;
      ++i_;
      if (peek() == ']') return ++i_, v;
      for (;;) {
        v.items.push_back(value());
        if (peek() == ',') { ++i_; continue; }
        expect(']');
        return v;
      }
    }
    if (c == '"') { v.kind = Json::String; v.str = string(); return v; }
    if (literal("true")) { v.kind = Json::Bool; v.boolean = true; return v; }
    if (literal("false")) { v.kind = Json::Bool; return v; }
    if (literal("null")) return v;
    size_t end = i_;
    while (end < s_.size() && std::string("+-0123456789.eE").find(s_[end]) != std::string::npos) ++end;
    if (end == i_) fail("unexpected character");
    v.kind = Json::Number;
    v.number = std::stod(s_.substr(i_, end - i_));
    i_ = end;
    return v;
  }
  std::string string() {
    expect('"');
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') { out += c; continue; }
      if (i_ >= s_.size()) fail("bad escape");
      char e = s_[i_++];
      const std::string plain = "\"\\/bfnrt", meant = "\"\\/\b\f\n\r\t";
      if (plain.find(e) != std::string::npos) { out += meant[plain.find(e)]; continue; }
      if (e != 'u' || i_ + 4 > s_.size()) fail("bad escape");
      unsigned cp = std::stoul(s_.substr(i_, 4), nullptr, 16);  // BMP only: enough for names and versions
      i_ += 4;
      if (cp < 0x80) out += char(cp);
      else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
      else { out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F)); }
    }
    expect('"');
    return out;
  }
};

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open it; is the directory a resdsl artefact?");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline Json read_manifest(const std::string& dir) {
  Json m = JsonParser(read_file(dir + "/manifest.json")).parse();
  if (m.kind != Json::Object || !m.find("schema") || m.at("schema").str != "resdsl.manifest/1")
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

inline TensorInfo tensor_info(const Json& manifest, const std::string& which) {
  const Json& t = manifest.at(which).at(0);
  TensorInfo info{t.at("name").str, t.at("dtype").str, {}};
  for (const Json& d : t.at("shape").items) info.shape.push_back(d.kind == Json::Number ? int64_t(d.number) : -1);
  return info;
}

// SHA-256 (FIPS 180-4), hex digest of a whole file read in 1 MiB chunks.
inline std::string sha256_file(const std::string& path) {
  static const uint32_t K[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
      0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
      0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
      0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
      0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
      0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
      0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
      0xc67178f2};
  std::array<uint32_t, 8> h = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  auto block = [&](const unsigned char* p) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 |
                                        uint32_t(p[4 * i + 2]) << 8 | uint32_t(p[4 * i + 3]);
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open it");
  std::vector<unsigned char> buf(1 << 20);
  uint64_t total = 0;
  size_t have = 0;  // bytes of a partial block kept at the start of buf
  for (;;) {
    in.read(reinterpret_cast<char*>(buf.data() + have), std::streamsize(buf.size() - have));
    size_t got = size_t(in.gcount());
    total += got;
    have += got;
    size_t full = have / 64 * 64;
    for (size_t off = 0; off < full; off += 64) block(buf.data() + off);
    std::copy(buf.begin() + full, buf.begin() + have, buf.begin());
    have -= full;
    if (!in) break;
  }
  unsigned char tail[128] = {0};
  std::copy(buf.begin(), buf.begin() + have, tail);
  tail[have] = 0x80;
  size_t len = have + 1 + 8 <= 64 ? 64 : 128;
  for (int i = 0; i < 8; ++i) tail[len - 1 - i] = (unsigned char)((total * 8) >> (8 * i));
  for (size_t off = 0; off < len; off += 64) block(tail + off);
  std::string hex;
  char part[9];
  for (uint32_t v : h) { std::snprintf(part, sizeof part, "%08x", v); hex += part; }
  return hex;
}

// Refuse a file whose SHA-256 differs from the manifest's, before anything deserializes it.
inline void check_file(const std::string& dir, const Json& manifest, const std::string& name) {
  const std::string want = manifest.at("files").at(name).at("sha256").str;
  const std::string got = sha256_file(dir + "/" + name);
  if (got != want)
    throw std::runtime_error(dir + "/" + name + " does not match the sha256 in manifest.json: it changed after it "
                             "was compiled, so it is not loaded; compile it again");
}

}  // namespace resdsl
