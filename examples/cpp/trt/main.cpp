// resdsl_trt DIR [IMAGE.bin]
//
// Runs a resdsl TensorRT artefact (`resdsl compile --target trt`) with the TensorRT 10/11 C++ runtime and prints
// the top-5 logits as "index score" lines; for a backbone (several outputs, or feature maps), one line per output
// instead: "NAME SHAPE mean M max X" for the first image. Names, shapes and dtypes come from DIR/manifest.json (a
// height and width that vary are taken at the --size range's opt); DIR/model.engine
// is checked against the manifest's sha256, TensorRT version and GPU compute capability before it is
// deserialized (deserializing an engine runs code from it). IMAGE.bin holds one image as raw little-endian
// float32 in C*H*W order; without it the input is linspace(-1, 1, C*H*W) reshaped to (1, C, H, W).
// Exit status: 0 ok, 1 failure (message on stderr), 2 usage.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "resdsl_manifest.hpp"

static_assert(NV_TENSORRT_MAJOR >= 10, "resdsl_trt needs TensorRT 10 or newer (enqueueV3, 64-bit Dims)");

namespace {

void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "TensorRT: %s\n", msg);
  }
};

// Device memory freed on every path out.
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) { cuda_check(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
  ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { cuda_check(cudaStreamCreate(&s), "cudaStreamCreate"); }
  ~Stream() { cudaStreamDestroy(s); }
  operator cudaStream_t() const { return s; }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

// IEEE binary16 <-> binary32 on the host, round to nearest even (for --io fp16 engines).
uint16_t to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, fexp = (x >> 23) & 0xFFu;
  uint32_t mant = x & 0x7FFFFFu;
  if (fexp == 0xFF) return uint16_t(sign | 0x7C00u | (mant ? 0x200u : 0u));
  const int32_t exp = int32_t(fexp) - 127 + 15;
  if (exp >= 31) return uint16_t(sign | 0x7C00u);
  if (exp <= 0) {
    if (exp < -10) return uint16_t(sign);
    mant |= 0x800000u;
    const uint32_t shift = uint32_t(14 - exp), half = mant >> shift, rem = mant & ((1u << shift) - 1u);
    const uint32_t mid = 1u << (shift - 1);
    return uint16_t(sign | (half + ((rem > mid || (rem == mid && (half & 1u))) ? 1u : 0u)));
  }
  uint32_t half = (uint32_t(exp) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;  // a carry into the exponent is still right
  return uint16_t(sign | half);
}

float from_half(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (exp == 0) {
    float f = std::ldexp(float(mant), -24);
    return sign ? -f : f;
  }
  const uint32_t bits = sign | (exp == 31 ? 0x7F800000u | (mant << 13) : ((exp + 112) << 23) | (mant << 13));
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::vector<float> make_input(int64_t per_image, const char* image_path) {
  std::vector<float> x(static_cast<size_t>(per_image));
  if (image_path) {
    const std::string bytes = resdsl::read_file(image_path);
    if (bytes.size() != x.size() * sizeof(float))
      throw std::runtime_error(std::string(image_path) + " holds " + std::to_string(bytes.size()) +
                               " bytes; the engine takes one image of " + std::to_string(per_image) +
                               " float32 values (C*H*W order)");
    std::memcpy(x.data(), bytes.data(), bytes.size());
  } else {  // torch.linspace(-1, 1, n) to within 1 ulp: from the start for the first half, from the end after
    const double step = per_image > 1 ? 2.0 / double(per_image - 1) : 0.0;
    for (int64_t i = 0; i < per_image; ++i)
      x[size_t(i)] = i < per_image / 2 ? float(-1.0 + step * double(i)) : float(1.0 - step * double(per_image - 1 - i));
  }
  return x;
}

// Refuse an engine this TensorRT or GPU cannot run, before deserializing it (as resdsl.runtime does).
void check_engine(const resdsl::Json& trt, bool version_compatible) {
  const int32_t v = getInferLibVersion();  // TensorRT >= 10: MAJOR * 10000 + MINOR * 100 + PATCH
  const std::string here = std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
                           std::to_string(v % 100);
  const std::string built = resdsl::get<std::string>(trt, "trt_version");
  const bool same = built.compare(0, here.size(), here) == 0 &&
                    (built.size() == here.size() || built[here.size()] == '.');
  if (!same && !version_compatible)
    throw std::runtime_error("the engine was built with TensorRT " + built + " but this program runs TensorRT " +
                             here + "; engines only load in the TensorRT that built them: rebuild it here with "
                             "`resdsl compile --target trt`, or build it with --version-compatible");
  int dev = 0, major = 0, minor = 0;
  cuda_check(cudaGetDevice(&dev), "cudaGetDevice (is there an NVIDIA GPU and driver?)");
  cuda_check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
  cuda_check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
  const std::string cc = std::to_string(major) + "." + std::to_string(minor);
  if (resdsl::get<std::string>(trt, "compute_capability") != cc)
    throw std::runtime_error("the engine was built for compute capability " + resdsl::get<std::string>(trt, "compute_capability") +
                             " but this GPU is " + cc + "; engines are tied to the GPU architecture: rebuild it here");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s DIR [IMAGE.bin]\n  DIR: a resdsl trt artefact (manifest.json, model.engine)\n"
                 "  IMAGE.bin: one input image, raw float32 C*H*W (default: linspace(-1, 1, C*H*W))\n", argv[0]);
    return 2;
  }
  try {
    const std::string dir = argv[1];
    const resdsl::Json m = resdsl::read_manifest(dir);
    if (resdsl::get<std::string>(m, "target") != "trt")
      throw std::runtime_error(dir + " holds a '" + resdsl::get<std::string>(m, "target") + "' artefact; this program runs trt ones "
                               "(resdsl compile --target trt)");
    const resdsl::Json& trt = resdsl::at(m, "trt");
    const resdsl::Json opts = trt.value("options", resdsl::Json::object());
    const bool version_compatible = opts.value("version_compatible", false);
    check_engine(trt, version_compatible);
    const resdsl::TensorInfo in = resdsl::input_info(m);  // a height and width that vary: the --size range's opt
    const std::vector<resdsl::TensorInfo> outs = resdsl::tensor_infos(m, "outputs");

    resdsl::check_file(dir, m, "model.engine");  // sha256 before deserializing: an engine is executable code
    const std::string blob = resdsl::read_file(dir + "/model.engine");
    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
    if (!runtime) throw std::runtime_error("could not create the TensorRT runtime");
    runtime->setEngineHostCodeAllowed(version_compatible);  // version-compatible engines embed a lean runtime
    std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(blob.data(), blob.size())};
    if (!engine) throw std::runtime_error(dir + "/model.engine: TensorRT could not deserialize it (see above)");
    std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};
    if (!context) throw std::runtime_error("could not create an execution context");

    std::vector<const resdsl::TensorInfo*> io{&in};
    for (const resdsl::TensorInfo& o : outs) io.push_back(&o);
    for (const resdsl::TensorInfo* t : io) {
      const nvinfer1::DataType dt = engine->getTensorDataType(t->name.c_str());
      const bool ok = engine->getTensorIOMode(t->name.c_str()) != nvinfer1::TensorIOMode::kNONE &&
                      ((t->dtype == "float32" && dt == nvinfer1::DataType::kFLOAT) ||
                       (t->dtype == "float16" && dt == nvinfer1::DataType::kHALF));
      if (!ok) throw std::runtime_error("the engine has no " + t->dtype + " tensor '" + t->name +
                                        "' as manifest.json says; rebuild it with resdsl");
    }
    // The profile's smallest batch; a fixed-batch engine (--batch N) takes exactly N: repeat the image.
    const auto batch = resdsl::get<int64_t>(resdsl::at(m, "batch"), "min");
    const int64_t per_image = in.numel_per_item();
    const std::vector<float> image = make_input(per_image, argc == 3 ? argv[2] : nullptr);
    nvinfer1::Dims dims{};
    dims.nbDims = int32_t(in.shape.size());
    for (int32_t i = 0; i < dims.nbDims; ++i) dims.d[i] = i == 0 ? batch : in.shape[size_t(i)];
    if (!context->setInputShape(in.name.c_str(), dims))
      throw std::runtime_error("TensorRT rejected the input shape (batch " + std::to_string(batch) + ")");
    // Each output at the shape TensorRT derives from the input's: the logits, or a backbone's feature maps.
    struct Output {
      const resdsl::TensorInfo* info;
      std::vector<int64_t> shape;
      size_t bytes;
      std::unique_ptr<DeviceBuffer> device;
      std::vector<unsigned char> host;
    };
    std::vector<Output> outputs;
    for (const resdsl::TensorInfo& o : outs) {
      const nvinfer1::Dims od = context->getTensorShape(o.name.c_str());
      std::vector<int64_t> shape(od.d, od.d + od.nbDims);
      int64_t count = 1;
      for (int64_t d : shape) count *= d;
      const size_t bytes = size_t(count) * (o.dtype == "float16" ? 2 : 4);
      outputs.push_back({&o, shape, bytes, std::make_unique<DeviceBuffer>(bytes), std::vector<unsigned char>(bytes)});
    }

    const bool half_in = in.dtype == "float16";
    std::vector<uint16_t> in16;
    std::vector<float> in32;
    for (int64_t b = 0; b < batch; ++b) {
      if (half_in) std::transform(image.begin(), image.end(), std::back_inserter(in16), to_half);
      else in32.insert(in32.end(), image.begin(), image.end());
    }
    const size_t in_bytes = half_in ? in16.size() * 2 : in32.size() * 4;
    DeviceBuffer d_in(in_bytes);
    Stream stream;
    cuda_check(cudaMemcpyAsync(d_in.ptr, half_in ? static_cast<const void*>(in16.data()) : in32.data(), in_bytes,
                               cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
    context->setTensorAddress(in.name.c_str(), d_in.ptr);
    for (Output& o : outputs) context->setTensorAddress(o.info->name.c_str(), o.device->ptr);
    const bool ran = context->enqueueV3(stream);
    for (Output& o : outputs)
      cuda_check(cudaMemcpyAsync(o.host.data(), o.device->ptr, o.bytes, cudaMemcpyDeviceToHost, stream),
                 "cudaMemcpyAsync");
    cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    if (!ran) throw std::runtime_error("enqueueV3 failed (see TensorRT's messages above)");

    // The first image's values of one output, as float.
    auto first_image = [&](const Output& o) {
      const size_t n = o.bytes / (o.info->dtype == "float16" ? 2 : 4) / size_t(batch);
      std::vector<float> v(n);
      for (size_t c = 0; c < n; ++c) {
        if (o.info->dtype == "float16") {
          uint16_t h;
          std::memcpy(&h, o.host.data() + 2 * c, 2);
          v[c] = from_half(h);
        } else {
          std::memcpy(&v[c], o.host.data() + 4 * c, 4);
        }
      }
      return v;
    };
    if (outputs.size() == 1 && outputs[0].shape.size() == 2) {  // a classifier: the top-5 logits
      const std::vector<float> logits = first_image(outputs[0]);
      std::vector<int64_t> order(logits.size());
      std::iota(order.begin(), order.end(), 0);
      const size_t k = std::min<size_t>(5, order.size());
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int64_t a, int64_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
      for (size_t i = 0; i < k; ++i)
        std::printf("%lld %.9g\n", static_cast<long long>(order[i]), logits[size_t(order[i])]);
    } else {  // a backbone: each feature map of the first image, in the manifest's order
      for (const Output& o : outputs) {
        const std::vector<float> v = first_image(o);
        std::string shape;
        for (size_t i = 1; i < o.shape.size(); ++i) shape += (shape.empty() ? "" : "x") + std::to_string(o.shape[i]);
        double sum = 0;
        float peak = v.empty() ? 0.0f : v[0];
        for (float f : v) { sum += f; peak = std::max(peak, f); }
        std::printf("%s %s mean %.9g max %.9g\n", o.info->name.c_str(), shape.c_str(),
                    v.empty() ? 0.0 : sum / double(v.size()), peak);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resdsl_trt: %s\n", e.what());
    return 1;
  }
  return 0;
}
