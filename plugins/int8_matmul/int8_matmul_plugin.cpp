// dsattn::Int8MatMul as a TensorRT IPluginV3 (OPS.md §3): y = x @ dequant(weight)^T + bias.
#include <climits>

#include "int8_matmul.h"
#include "plugin_common.h"

namespace dsattn {
namespace plugin {
namespace {

using namespace nvinfer1;

constexpr char const* kNAME = "Int8MatMul";
enum { kIN_INPUT = 0, kIN_WEIGHT = 1, kIN_SCALE = 2, kIN_BIAS = 3 };


class Int8MatMulPlugin final : public PluginBase {
 public:
  explicit Int8MatMulPlugin(AttrValues attrs) : PluginBase(kNAME, std::move(attrs)) {
    mGroup = mAttrs.getInt("group_size");
    ops::checkInt8MatMul({mGroup});
  }

 protected:
  PluginBase* cloneImpl() const override { return new Int8MatMulPlugin(*this); }
  int32_t nbOutputsImpl() const override { return 1; }

  void checkInputCount(int32_t nbInputs) const {
    DSATTN_CHECK(nbInputs >= 3 && nbInputs <= 4,
                 "takes 3 or 4 inputs (input, weight, weight_scale[, bias]), got " << nbInputs);
  }

  void outputTypesImpl(DataType* outputTypes, int32_t, DataType const* inputTypes, int32_t nbInputs) const override {
    checkInputCount(nbInputs);
    DSATTN_CHECK(isFloatT(inputTypes[kIN_INPUT]), "input must be float32, float16 or bfloat16, got "
                                                      << dataTypeName(inputTypes[kIN_INPUT]));
    outputTypes[0] = inputTypes[kIN_INPUT];
  }

  void outputShapesImpl(DimsExprs const* in, int32_t nbInputs, DimsExprs* out, int32_t,
                        IExprBuilder&) const override {
    checkInputCount(nbInputs);
    DSATTN_CHECK(in[kIN_INPUT].nbDims >= 1, "input must be [..., K], got rank " << in[kIN_INPUT].nbDims);
    DSATTN_CHECK(in[kIN_WEIGHT].nbDims == 2, "weight must be int8 [N, K], got rank " << in[kIN_WEIGHT].nbDims);
    out[0] = in[kIN_INPUT];
    out[0].d[out[0].nbDims - 1] = in[kIN_WEIGHT].d[0];
  }

  bool supportsImpl(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs, int32_t) const override {
    checkInputCount(nbInputs);
    DataType const t = io[pos].desc.type;
    if (pos == kIN_INPUT) return isFloatT(t);
    if (pos == kIN_WEIGHT) return t == DataType::kINT8;
    if (pos == kIN_SCALE) return t == DataType::kFLOAT;
    if (pos == kIN_BIAS && pos < nbInputs) {
      Dims const d = io[pos].desc.dims;
      return isAbsent(0, 1, &d) || t == io[kIN_INPUT].desc.type;
    }
    return t == io[kIN_INPUT].desc.type;  // the output: same T as the input
  }

  void checkShapesImpl(Dims const* in, DataType const* types, int32_t nbInputs, Dims const* out,
                       int32_t) const override {
    checkInputCount(nbInputs);
    Dims const& x = in[kIN_INPUT];
    DSATTN_CHECK(x.nbDims >= 1, "input must be [..., K], got shape " << dimsToString(x));
    int64_t const K = x.d[x.nbDims - 1];
    expectRank(in[kIN_WEIGHT], 2, "weight", "[N, K]");
    int64_t const N = in[kIN_WEIGHT].d[0];
    expectDim(in[kIN_WEIGHT], 1, K, "weight", "K");
    int64_t const Kw = in[kIN_WEIGHT].d[1];
    if (known(Kw)) {
      DSATTN_CHECK(Kw % DSATTN_INT8_K_MULTIPLE == 0,
                   "K=" << Kw << " is not supported by the kernels: it must be a multiple of " << DSATTN_INT8_K_MULTIPLE);
      DSATTN_CHECK(mGroup == 0 || Kw % mGroup == 0, "group_size=" << mGroup << " does not divide K=" << Kw);
    }
    expectRank(in[kIN_SCALE], 2, "weight_scale", "[N, K / group_size]");
    expectDim(in[kIN_SCALE], 0, N, "weight_scale", "N");
    if (known(Kw)) expectDim(in[kIN_SCALE], 1, mGroup == 0 ? 1 : Kw / mGroup, "weight_scale", "K / group_size");
    DSATTN_CHECK(isFloatT(types[kIN_INPUT]), "input must be float32, float16 or bfloat16, got "
                                                 << dataTypeName(types[kIN_INPUT]));
    DSATTN_CHECK(types[kIN_WEIGHT] == DataType::kINT8, "weight must be int8, got " << dataTypeName(types[kIN_WEIGHT]));
    DSATTN_CHECK(types[kIN_SCALE] == DataType::kFLOAT, "weight_scale must be float32, got "
                                                           << dataTypeName(types[kIN_SCALE]));
    if (!isAbsent(kIN_BIAS, nbInputs, in)) {
      expectRank(in[kIN_BIAS], 1, "bias", "[N]");
      expectDim(in[kIN_BIAS], 0, N, "bias", "N");
      DSATTN_CHECK(types[kIN_BIAS] == types[kIN_INPUT], "bias type " << dataTypeName(types[kIN_BIAS])
                                                                     << " differs from input type " << dataTypeName(types[kIN_INPUT]));
    }
    DSATTN_CHECK(out[0].nbDims == x.nbDims, "output rank " << out[0].nbDims << " differs from input rank " << x.nbDims);
    expectDim(out[0], out[0].nbDims - 1, N, "output", "N");
  }

  dsattn_int8_matmul_params params(Dims const* in, DataType const* types) const {
    dsattn_int8_matmul_params p{};
    Dims const& x = in[kIN_INPUT];
    p.K = x.d[x.nbDims - 1];
    p.M = p.K > 0 ? volume(x) / p.K : 0;
    p.N = in[kIN_WEIGHT].d[0];
    p.group_size = mGroup;
    p.dtype = toKernelDtype(types[kIN_INPUT]);
    return p;
  }

  size_t workspaceImpl(Dims const* inMax, DataType const* types, int32_t nbInputs) const override {
    checkInputCount(nbInputs);
    dsattn_int8_matmul_params p = params(inMax, types);
    p.input = workspaceQueryPointer(0);
    p.weight = static_cast<int8_t const*>(workspaceQueryPointer(1));
    p.weight_scale = static_cast<float const*>(workspaceQueryPointer(2));
    p.output = workspaceQueryPointer(3);
    // Small M uses split-K partial sums in the workspace, the Hopper tiled path with group scales
    // a fixed-size scale buffer: the engine runs every M up to the profile's max with this one
    // size, so take the maximum over the small-M range and max M.
    int64_t const mMax = p.M;
    size_t ws = 0;
    for (int64_t m = 1; m <= mMax; m = (m < 128 ? m + 1 : mMax)) {
      p.M = m;
      size_t const w = dsattn_int8_matmul_workspace_size(&p);
      ws = w > ws ? w : ws;
      if (m == mMax) break;
    }
    return ws;
  }

  void enqueueImpl(PluginTensorDesc const* inDesc, PluginTensorDesc const* outDesc, int32_t nbInputs,
                   void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) override {
    // Shapes (row-major, M = product of the leading dims of input):
    //   input        T     [..., K]        -> [M, K]
    //   weight       int8  [N, K]
    //   weight_scale fp32  [N, K / g]      g = group_size or K
    //   bias         T     [N]             optional (input 3)
    //   output       T     [..., N]        -> [M, N]
    TensorDescs const in(inDesc, nbInputs);
    auto const& dims = in.dims;
    auto const& types = in.types;
    dsattn_int8_matmul_params p = params(dims.data(), types.data());
    DSATTN_CHECK(outDesc[0].type == types[kIN_INPUT], "output type differs from input type");
    p.input = inputs[kIN_INPUT];
    p.weight = static_cast<int8_t const*>(inputs[kIN_WEIGHT]);
    p.weight_scale = static_cast<float const*>(inputs[kIN_SCALE]);
    p.bias = isAbsent(kIN_BIAS, nbInputs, dims.data()) ? nullptr : inputs[kIN_BIAS];
    p.output = outputs[0];
    size_t const need = dsattn_int8_matmul_workspace_size(&p);
    DSATTN_CHECK(need == 0 || workspace != nullptr, "kernel needs " << need << " workspace bytes, got none");
    DSATTN_CUDA_CHECK(dsattn_int8_matmul(&p, workspace, need, stream));
  }

 private:
  int32_t mGroup = 0;
};

PluginBase* makePlugin(AttrValues attrs) { return new Int8MatMulPlugin(std::move(attrs)); }

}  // namespace

IPluginCreatorInterface* int8MatMulCreator() {
  static Creator creator(kNAME, &ops::int8MatMulAttrTable(), &makePlugin);
  return &creator;
}

}  // namespace plugin
}  // namespace dsattn
