// resdsl_aoti DIR [IMAGE.bin]
//
// Runs a resdsl aoti artefact (`resdsl compile --target aoti`) with libtorch and prints the top-5 logits as
// "index score" lines; for a backbone (several outputs, or feature maps), one line per output instead:
// "NAME SHAPE mean M max X" for the first image. DIR/manifest.json gives the input's name, shape and dtype (a
// height and width that vary are taken at the --size range's opt); DIR/model.pt2 is checked against the
// manifest's sha256 and torch version before it is loaded. IMAGE.bin holds one image as raw little-endian
// float32 in C*H*W order; without it the input is linspace(-1, 1, C*H*W) reshaped to (1, C, H, W), the same as
// `torch.linspace(-1, 1, C*H*W).reshape(1, C, H, W)` in Python.
// Exit status: 0 ok, 1 failure (message on stderr), 2 usage.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/version.h>

#include <cctype>
#include <cstdio>
#include <string>
#include <vector>

#include "resdsl_manifest.hpp"

namespace {

// The manifest's torch must be the release of this libtorch: "2.13.0+cpu" and "2.13.0+cu128" both match 2.13.0.
void check_torch_version(const std::string& built) {
  const std::string here = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                           std::to_string(TORCH_VERSION_PATCH);
  bool same = built.compare(0, here.size(), here) == 0 &&
              (built.size() == here.size() || !std::isdigit(static_cast<unsigned char>(built[here.size()])));
  if (!same)
    throw std::runtime_error("the package was compiled by torch " + built + " but this libtorch is " + here +
                             "; AOTInductor packages only load in the release that compiled them: build this "
                             "program against that torch, or compile the artefact again (nothing was loaded)");
}

at::Tensor make_input(const resdsl::TensorInfo& in, const char* image_path) {
  const int64_t per_image = in.numel_per_item();
  at::Tensor x;
  if (image_path) {
    std::string bytes = resdsl::read_file(image_path);
    if (bytes.size() != size_t(per_image) * sizeof(float))
      throw std::runtime_error(std::string(image_path) + " holds " + std::to_string(bytes.size()) +
                               " bytes; the model takes one image of " + std::to_string(per_image) +
                               " float32 values (" + std::to_string(per_image * 4) + " bytes, C*H*W order)");
    x = at::from_blob(bytes.data(), {per_image}, at::kFloat).clone();  // clone: bytes goes out of scope
  } else {
    x = at::linspace(-1.0, 1.0, per_image, at::kFloat);
  }
  std::vector<int64_t> shape = in.shape;
  shape[0] = 1;
  return x.reshape(shape);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s DIR [IMAGE.bin]\n  DIR: a resdsl aoti artefact (manifest.json, model.pt2)\n"
                 "  IMAGE.bin: one input image, raw float32 C*H*W (default: linspace(-1, 1, C*H*W))\n", argv[0]);
    return 2;
  }
  try {
    const std::string dir = argv[1];
    const resdsl::Json m = resdsl::read_manifest(dir);
    if (resdsl::get<std::string>(m, "target") != "aoti")
      throw std::runtime_error(dir + " holds a '" + resdsl::get<std::string>(m, "target") + "' artefact; this program runs aoti ones "
                               "(resdsl compile --target aoti)");
    const resdsl::Json& aoti = resdsl::at(m, "aoti");
    const std::string device = resdsl::get<std::string>(aoti, "device");
    check_torch_version(resdsl::get<std::string>(aoti, "torch"));
    if (device == "cuda" && !at::hasCUDA())
      throw std::runtime_error("the package was compiled for cuda but this libtorch has no CUDA support or sees "
                               "no GPU; build against a CUDA torch on a GPU machine, or compile with --device cpu");
    if (device != "cpu" && device != "cuda") throw std::runtime_error("unknown aoti device '" + device + "'");

    const resdsl::TensorInfo in = resdsl::input_info(m);
    const std::vector<resdsl::TensorInfo> outs = resdsl::tensor_infos(m, "outputs");
    at::Tensor x = make_input(in, argc == 3 ? argv[2] : nullptr);
    // A fixed-batch package (--batch N) takes exactly N images: repeat ours and keep the first answer.
    const auto min_batch = resdsl::get<int64_t>(resdsl::at(m, "batch"), "min");
    if (min_batch > 1) {
      std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
      shape[0] = min_batch;
      x = x.expand(shape).contiguous();
    }
    if (in.dtype == "float16") x = x.to(at::kHalf);
    if (device == "cuda") x = x.to(at::kCUDA);

    resdsl::check_file(dir, m, "model.pt2");  // before the package's shared library is loaded
    torch::inductor::AOTIModelPackageLoader loader(dir + "/model.pt2");
    std::vector<at::Tensor> outputs = loader.run({x});
    if (outputs.size() != outs.size())
      throw std::runtime_error("the package returned " + std::to_string(outputs.size()) + " outputs, the manifest "
                               "lists " + std::to_string(outs.size()) + "; compile the artefact again");
    if (outs.size() == 1 && outs[0].shape.size() == 2) {  // a classifier: the top-5 logits
      at::Tensor logits = outputs[0].to(at::kFloat).cpu()[0];
      auto [scores, indices] = logits.topk(std::min<int64_t>(5, logits.numel()));
      for (int64_t i = 0; i < scores.numel(); ++i)
        std::printf("%lld %.9g\n", static_cast<long long>(indices[i].item<int64_t>()), scores[i].item<float>());
    } else {  // a backbone: each feature map of the first image, in the manifest's order
      for (size_t k = 0; k < outs.size(); ++k) {
        at::Tensor f = outputs[k].to(at::kFloat).cpu()[0];
        std::string shape;
        for (int64_t d : f.sizes()) shape += (shape.empty() ? "" : "x") + std::to_string(d);
        std::printf("%s %s mean %.9g max %.9g\n", outs[k].name.c_str(), shape.c_str(), f.mean().item<float>(),
                    f.max().item<float>());
      }
    }
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "resdsl_aoti: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resdsl_aoti: %s\n", e.what());
    return 1;
  }
  return 0;
}
