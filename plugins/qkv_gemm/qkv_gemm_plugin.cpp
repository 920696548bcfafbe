// dsattn::QKVGemm as a TensorRT IPluginV3 (OPS.md §1): qkv = norm(x) @ W + bias [, normed].
#include <cfloat>
#include <climits>

#include "int8_matmul.h"
#include "plugin_common.h"
#include "qkv_gemm.h"

namespace dsattn {
namespace plugin {
namespace {

using namespace nvinfer1;

constexpr char const* kNAME = "QKVGemm";
enum { kIN_INPUT = 0, kIN_WEIGHT = 1, kIN_BIAS = 2, kIN_GAMMA = 3, kIN_BETA = 4, kIN_SCALE = 5, kMAX_INPUTS = 6 };
char const* const kINPUT_NAMES[kMAX_INPUTS] = {"input", "weight", "bias", "gamma", "beta", "weight_scale"};


class QKVGemmPlugin final : public PluginBase {
 public:
  explicit QKVGemmPlugin(AttrValues attrs) : PluginBase(kNAME, std::move(attrs)) {
    mNorm = mAttrs.getInt("norm_type");
    mEps = mAttrs.getFloat("epsilon");
    mQuant = mAttrs.getInt("quantized");
    mGroup = mAttrs.getInt("group_size");
    mEmitNormed = mAttrs.getInt("emit_normed");
    ops::checkQKVGemm({mNorm, mEps, mQuant, mGroup, mEmitNormed});
  }
  // The cuBLASLt context is per instance: a copy (clone, attachToContext) creates its own.
  QKVGemmPlugin(QKVGemmPlugin const& o)
      : PluginBase(o), mNorm(o.mNorm), mEps(o.mEps), mQuant(o.mQuant), mGroup(o.mGroup), mEmitNormed(o.mEmitNormed) {}
  QKVGemmPlugin& operator=(QKVGemmPlugin const&) = delete;
  ~QKVGemmPlugin() override {
    if (mCtx != nullptr) dsattn_gemm_ctx_destroy(mCtx);
  }

 protected:
  PluginBase* cloneImpl() const override { return new QKVGemmPlugin(*this); }
  int32_t nbOutputsImpl() const override { return mEmitNormed ? 2 : 1; }

  // Which inputs the attributes require / forbid (OPS.md §1; dsattn.export.ops rejects the same).
  bool required(int32_t i) const {
    switch (i) {
      case kIN_INPUT:
      case kIN_WEIGHT: return true;
      case kIN_GAMMA: return mNorm != 0;
      case kIN_BETA: return mNorm == 1;
      case kIN_SCALE: return mQuant == 1;
      default: return false;
    }
  }
  bool forbidden(int32_t i) const {
    return (i == kIN_GAMMA && mNorm == 0) || (i == kIN_BETA && mNorm != 1) || (i == kIN_SCALE && mQuant == 0);
  }
  void checkInputCount(int32_t nbInputs) const {
    DSATTN_CHECK(nbInputs >= 2 && nbInputs <= kMAX_INPUTS,
                 "takes 2..6 inputs (input, weight, bias, gamma, beta, weight_scale), got " << nbInputs);
    for (int32_t i = nbInputs; i < kMAX_INPUTS; ++i) {
      DSATTN_CHECK(!required(i), "input " << i << " '" << kINPUT_NAMES[i] << "' is required with norm_type=" << mNorm
                                          << ", quantized=" << mQuant << " but the node has only " << nbInputs
                                          << " inputs");
    }
  }
  template <typename DimsT>
  void checkPresence(DimsT const* in, int32_t nbInputs, bool absent(int32_t, int32_t, DimsT const*)) const {
    for (int32_t i = 0; i < kMAX_INPUTS; ++i) {
      bool const a = absent(i, nbInputs, in);
      DSATTN_CHECK(!(a && required(i)), "input " << i << " '" << kINPUT_NAMES[i] << "' is required with norm_type="
                                                 << mNorm << ", quantized=" << mQuant << " but absent");
      DSATTN_CHECK(!(!a && forbidden(i)), "input " << i << " '" << kINPUT_NAMES[i] << "' must be absent with norm_type="
                                                   << mNorm << ", quantized=" << mQuant);
    }
  }

  void outputTypesImpl(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                       int32_t nbInputs) const override {
    checkInputCount(nbInputs);
    DSATTN_CHECK(isFloatT(inputTypes[kIN_INPUT]), "input must be float32, float16 or bfloat16, got "
                                                      << dataTypeName(inputTypes[kIN_INPUT]));
    for (int32_t i = 0; i < nbOutputs; ++i) outputTypes[i] = inputTypes[kIN_INPUT];
  }

  void outputShapesImpl(DimsExprs const* in, int32_t nbInputs, DimsExprs* out, int32_t nbOutputs,
                        IExprBuilder&) const override {
    checkInputCount(nbInputs);
    checkPresence<DimsExprs>(in, nbInputs, isAbsentExpr);
    DSATTN_CHECK(in[kIN_INPUT].nbDims == 3, "input must be [B, S, hidden], got rank " << in[kIN_INPUT].nbDims);
    DSATTN_CHECK(in[kIN_WEIGHT].nbDims == 2, "weight must be rank 2, got rank " << in[kIN_WEIGHT].nbDims);
    out[0] = in[kIN_INPUT];
    // float weight [hidden, N] (input-major); int8 weight [N, hidden] (output-major).
    out[0].d[2] = mQuant ? in[kIN_WEIGHT].d[0] : in[kIN_WEIGHT].d[1];
    if (nbOutputs == 2) out[1] = in[kIN_INPUT];
  }

  bool supportsImpl(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs, int32_t) const override {
    checkInputCount(nbInputs);
    DataType const t = io[pos].desc.type;
    DataType const T = io[kIN_INPUT].desc.type;
    if (pos == kIN_INPUT) return isFloatT(t);
    if (pos >= nbInputs) return t == T;  // outputs
    Dims const d = io[pos].desc.dims;
    if (pos != kIN_WEIGHT && isAbsent(0, 1, &d)) return true;  // absent optional input: no data
    if (pos == kIN_WEIGHT) return mQuant ? t == DataType::kINT8 : t == T;
    if (pos == kIN_SCALE) return t == DataType::kFLOAT;
    return t == T;  // bias, gamma, beta
  }

  void checkShapesImpl(Dims const* in, DataType const* types, int32_t nbInputs, Dims const* out,
                       int32_t nbOutputs) const override {
    checkInputCount(nbInputs);
    checkPresence<Dims>(in, nbInputs, isAbsent);
    expectRank(in[kIN_INPUT], 3, "input", "[B, S, hidden]");
    int64_t const K = in[kIN_INPUT].d[2];
    DataType const T = types[kIN_INPUT];
    DSATTN_CHECK(isFloatT(T), "input must be float32, float16 or bfloat16, got " << dataTypeName(T));
    int64_t N;
    if (mQuant) {
      expectRank(in[kIN_WEIGHT], 2, "int8 weight", "[N, hidden]");
      expectDim(in[kIN_WEIGHT], 1, K, "int8 weight", "hidden");
      DSATTN_CHECK(types[kIN_WEIGHT] == DataType::kINT8, "weight must be int8 with quantized=1, got "
                                                             << dataTypeName(types[kIN_WEIGHT]));
      N = in[kIN_WEIGHT].d[0];
      int64_t const Kw = in[kIN_WEIGHT].d[1];
      if (known(Kw)) {
        DSATTN_CHECK(Kw % DSATTN_INT8_K_MULTIPLE == 0, "hidden=" << Kw << " is not supported by the int8 kernels: "
                                                                 << "it must be a multiple of " << DSATTN_INT8_K_MULTIPLE);
        DSATTN_CHECK(mGroup == 0 || Kw % mGroup == 0, "group_size=" << mGroup << " does not divide hidden=" << Kw);
      }
      expectRank(in[kIN_SCALE], 2, "weight_scale", "[N, hidden / group_size]");
      expectDim(in[kIN_SCALE], 0, N, "weight_scale", "N");
      if (known(Kw)) expectDim(in[kIN_SCALE], 1, mGroup == 0 ? 1 : Kw / mGroup, "weight_scale", "hidden / group_size");
      DSATTN_CHECK(types[kIN_SCALE] == DataType::kFLOAT, "weight_scale must be float32, got "
                                                             << dataTypeName(types[kIN_SCALE]));
    } else {
      expectRank(in[kIN_WEIGHT], 2, "weight", "[hidden, N]");
      expectDim(in[kIN_WEIGHT], 0, K, "weight", "hidden");
      DSATTN_CHECK(types[kIN_WEIGHT] == T, "weight type " << dataTypeName(types[kIN_WEIGHT]) << " differs from input type "
                                                          << dataTypeName(T) << " (quantized=0)");
      N = in[kIN_WEIGHT].d[1];
    }
    if (!isAbsent(kIN_BIAS, nbInputs, in)) {
      expectRank(in[kIN_BIAS], 1, "bias", "[N]");
      expectDim(in[kIN_BIAS], 0, N, "bias", "N");
      DSATTN_CHECK(types[kIN_BIAS] == T, "bias type " << dataTypeName(types[kIN_BIAS]) << " differs from input type "
                                                      << dataTypeName(T));
    }
    for (int32_t i : {int32_t(kIN_GAMMA), int32_t(kIN_BETA)}) {
      if (isAbsent(i, nbInputs, in)) continue;
      expectRank(in[i], 1, kINPUT_NAMES[i], "[hidden]");
      expectDim(in[i], 0, K, kINPUT_NAMES[i], "hidden");
      DSATTN_CHECK(types[i] == T, kINPUT_NAMES[i] << " type " << dataTypeName(types[i]) << " differs from input type "
                                                  << dataTypeName(T));
    }
    expectRank(out[0], 3, "qkv", "[B, S, N]");
    expectDim(out[0], 2, N, "qkv", "N");
    if (nbOutputs == 2) {
      expectRank(out[1], 3, "normed", "[B, S, hidden]");
      expectDim(out[1], 2, K, "normed", "hidden");
    }
  }

  dsattn_qkv_gemm_params params(Dims const* in, DataType const* types) const {
    dsattn_qkv_gemm_params p{};
    p.M = in[kIN_INPUT].d[0] * in[kIN_INPUT].d[1];
    p.K = in[kIN_INPUT].d[2];
    p.N = mQuant ? in[kIN_WEIGHT].d[0] : in[kIN_WEIGHT].d[1];
    p.group_size = mGroup;
    p.norm_type = mNorm;
    p.quantized = mQuant;
    p.emit_normed = mEmitNormed;
    p.epsilon = mEps;
    p.dtype = toKernelDtype(types[kIN_INPUT]);
    return p;
  }

  size_t workspaceImpl(Dims const* inMax, DataType const* types, int32_t nbInputs) const override {
    checkInputCount(nbInputs);
    dsattn_qkv_gemm_params p = params(inMax, types);
    p.input = workspaceQueryPointer(0);
    p.weight = workspaceQueryPointer(1);
    p.bias = workspaceQueryPointer(2);
    p.gamma = mNorm != 0 ? workspaceQueryPointer(3) : nullptr;
    p.beta = mNorm == 1 ? workspaceQueryPointer(4) : nullptr;
    p.weight_scale = mQuant ? static_cast<float const*>(workspaceQueryPointer(5)) : nullptr;
    p.qkv = workspaceQueryPointer(6);
    p.normed = mEmitNormed ? workspaceQueryPointer(7) : nullptr;
    // The kernels choose their path (and scratch) by M; the engine runs every M up to the profile's
    // max with this one size, so take the maximum over the small-M range and the max M.
    int64_t const mMax = p.M;
    size_t ws = 0;
    for (int64_t m = 1; m <= mMax; m = (m < 128 ? m + 1 : mMax)) {
      p.M = m;
      size_t const w = dsattn_qkv_gemm_workspace_size(&p);
      ws = w > ws ? w : ws;
      if (m == mMax) break;
    }
    return ws;
  }

  void attachImpl() override { DSATTN_CUDA_CHECK(dsattn_gemm_ctx_create(&mCtx)); }

  void ensureCtx(cudaStream_t stream) {
    if (mCtx != nullptr) return;
    // Normally created in attachToContext. An instance that TensorRT enqueues without attaching it
    // (build-time profiling of a clone) creates it here, which is not allowed under graph capture.
    checkNotCapturing(stream, "the cuBLASLt context");
    DSATTN_CUDA_CHECK(dsattn_gemm_ctx_create(&mCtx));
  }

  void enqueueImpl(PluginTensorDesc const* inDesc, PluginTensorDesc const* outDesc, int32_t nbInputs,
                   void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) override {
    // Shapes (row-major, M = B*S, K = hidden):
    //   input        T     [B, S, K]
    //   weight       T     [K, N] (quantized=0)  |  int8 [N, K] (quantized=1)
    //   bias         T     [N]        optional
    //   gamma, beta  T     [K]        per norm_type
    //   weight_scale fp32  [N, K / g] quantized=1
    //   qkv          T     [B, S, N];  normed T [B, S, K] when emit_normed=1
    TensorDescs const in(inDesc, nbInputs);
    auto const& dims = in.dims;
    auto const& types = in.types;
    dsattn_qkv_gemm_params p = params(dims.data(), types.data());
    auto opt = [&](int32_t i) -> void const* { return isAbsent(i, nbInputs, dims.data()) ? nullptr : inputs[i]; };
    p.input = inputs[kIN_INPUT];
    p.weight = inputs[kIN_WEIGHT];
    p.bias = opt(kIN_BIAS);
    p.gamma = opt(kIN_GAMMA);
    p.beta = opt(kIN_BETA);
    p.weight_scale = static_cast<float const*>(opt(kIN_SCALE));
    p.qkv = outputs[0];
    p.normed = mEmitNormed ? outputs[1] : nullptr;
    DSATTN_CHECK(outDesc[0].type == types[kIN_INPUT], "qkv type differs from input type");
    ensureCtx(stream);
    size_t const need = dsattn_qkv_gemm_workspace_size(&p);
    DSATTN_CHECK(need == 0 || workspace != nullptr, "kernel needs " << need << " workspace bytes, got none");
    DSATTN_CUDA_CHECK(dsattn_qkv_gemm(mCtx, &p, workspace, need, stream));
  }

 private:
  int32_t mNorm = 1;
  float mEps = 1e-5f;
  int32_t mQuant = 0;
  int32_t mGroup = 0;
  int32_t mEmitNormed = 0;
  dsattn_gemm_ctx* mCtx = nullptr;
};

PluginBase* makePlugin(AttrValues attrs) { return new QKVGemmPlugin(std::move(attrs)); }

}  // namespace

IPluginCreatorInterface* qkvGemmCreator() {
  static Creator creator(kNAME, &ops::qkvGemmAttrTable(), &makePlugin);
  return &creator;
}

}  // namespace plugin
}  // namespace dsattn
