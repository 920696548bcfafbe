// dsattn::SoftmaxContext as a TensorRT IPluginV3 (OPS.md §2): rotary, KV-cache append, attention.
//
// KV cache: present_key / present_value alias past_key / past_value (IPluginV3OneBuildV2::
// getAliasedInput, honoured by TensorRT with PreviewFeature::kALIASED_PLUGIN_IO_10_03), so the
// cache is updated in place and the engine stays stateless. When the runtime hands separate
// buffers (the preview feature off), enqueue first copies past -> present and then appends in
// present, which gives the same result.
//
// Cache overflow (seq_lens[b] + S > Tmax, or a bad seq_lens / start_pos value) is detected on the
// device by the kernels, which then write nothing and set a status word. TensorRT cannot report a
// device-side error from enqueue (it would need a host synchronization), so the plugin makes it
// visible in the data: a tiny kernel fills `context` with NaN when the status is nonzero, and the
// cache is left exactly as it was. The status word lives in the first 256 bytes of the plugin's
// workspace.
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>

#include "plugin_common.h"
#include "softmax_context.h"

cudaError_t dsattnPoisonOnStatus(int32_t const* status, void* context, int64_t bytes, cudaStream_t stream);

namespace dsattn {
namespace plugin {
namespace {

using namespace nvinfer1;

constexpr char const* kNAME = "SoftmaxContext";
enum { kIN_QKV = 0, kIN_PAST_K = 1, kIN_PAST_V = 2, kIN_SEQ_LENS = 3, kIN_START_POS = 4 };
enum { kOUT_CONTEXT = 0, kOUT_PRESENT_K = 1, kOUT_PRESENT_V = 2 };
// Workspace layout: [status int32, padded to 256 bytes][kernel workspace, 256-byte aligned].
constexpr size_t kSTATUS_BYTES = 256;


class SoftmaxContextPlugin final : public PluginBase {
 public:
  explicit SoftmaxContextPlugin(AttrValues attrs) : PluginBase(kNAME, std::move(attrs)) {
    // Resolution of the optional attributes and every rule between them: op_attrs.h (shared with
    // the ONNX Runtime custom op); the resolved values are kept so getFieldsToSerialize writes them.
    ops::SoftmaxContextAttrs a;
    a.num_heads = mAttrs.getInt("num_heads");
    a.head_size = mAttrs.getInt("head_size");
    bool const hasKv = mAttrs.isSet("num_kv_heads"), hasScale = mAttrs.isSet("scale");
    if (hasKv) a.num_kv_heads = mAttrs.getInt("num_kv_heads");
    if (hasScale) a.scale = mAttrs.getFloat("scale");
    a.qkv_layout = mAttrs.getInt("qkv_layout");
    a.causal = mAttrs.getInt("causal");
    a.local_window = mAttrs.getInt("local_window");
    a.rotary_dim = mAttrs.getInt("rotary_dim");
    a.rotary_style = mAttrs.getInt("rotary_style");
    a.rope_theta = mAttrs.getFloat("rope_theta");
    a.alibi_slopes = mAttrs.getFloats("alibi_slopes");
    ops::resolveSoftmaxContext(a, hasKv, hasScale);
    mAttrs.setInt("num_kv_heads", a.num_kv_heads);
    mAttrs.setFloat("scale", a.scale);
    mH = a.num_heads;
    mD = a.head_size;
    mHkv = a.num_kv_heads;
    mScale = a.scale;
    mLayout = a.qkv_layout;
    mCausal = a.causal;
    mWindow = a.local_window;
    mRotary = a.rotary_dim;
    mRotaryStyle = a.rotary_style;
    mTheta = a.rope_theta;
    mSlopes = a.alibi_slopes;
  }
  // Device copy of the ALiBi slopes is per instance: a copy (clone, attachToContext) uploads its own.
  SoftmaxContextPlugin(SoftmaxContextPlugin const& o)
      : PluginBase(o), mH(o.mH), mHkv(o.mHkv), mD(o.mD), mScale(o.mScale), mLayout(o.mLayout), mCausal(o.mCausal),
        mWindow(o.mWindow), mRotary(o.mRotary), mRotaryStyle(o.mRotaryStyle), mTheta(o.mTheta), mSlopes(o.mSlopes) {}
  SoftmaxContextPlugin& operator=(SoftmaxContextPlugin const&) = delete;
  ~SoftmaxContextPlugin() override {
    if (mSlopesDev != nullptr) cudaFree(mSlopesDev);
  }

 protected:
  PluginBase* cloneImpl() const override { return new SoftmaxContextPlugin(*this); }
  int32_t nbOutputsImpl() const override { return 3; }
  int32_t aliasedInputImpl(int32_t outputIndex) const override {
    if (outputIndex == kOUT_PRESENT_K) return kIN_PAST_K;
    if (outputIndex == kOUT_PRESENT_V) return kIN_PAST_V;
    return -1;
  }

  void checkInputCount(int32_t nbInputs) const {
    DSATTN_CHECK(nbInputs >= 4 && nbInputs <= 5,
                 "takes 4 or 5 inputs (qkv, past_key, past_value, seq_lens[, start_pos]), got " << nbInputs);
  }

  void outputTypesImpl(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                       int32_t nbInputs) const override {
    checkInputCount(nbInputs);
    DSATTN_CHECK(isFloatT(inputTypes[kIN_QKV]), "qkv must be float32, float16 or bfloat16, got "
                                                    << dataTypeName(inputTypes[kIN_QKV]));
    for (int32_t i = 0; i < nbOutputs; ++i) outputTypes[i] = inputTypes[kIN_QKV];
  }

  int64_t qkvWidth() const { return (int64_t(mH) + 2 * int64_t(mHkv)) * mD; }

  void outputShapesImpl(DimsExprs const* in, int32_t nbInputs, DimsExprs* out, int32_t,
                        IExprBuilder& eb) const override {
    checkInputCount(nbInputs);
    DimsExprs const& qkv = in[kIN_QKV];
    DSATTN_CHECK(qkv.nbDims == 3, "qkv must be [B, S, (H + 2*Hkv)*D], got rank " << qkv.nbDims);
    if (qkv.d[2]->isConstant()) {
      DSATTN_CHECK(qkv.d[2]->getConstantValue() == qkvWidth(),
                   "qkv last dim is " << qkv.d[2]->getConstantValue() << ", expected (num_heads + 2*num_kv_heads) * "
                                      << "head_size = " << qkvWidth());
    }
    DSATTN_CHECK(in[kIN_PAST_K].nbDims == 4 && in[kIN_PAST_V].nbDims == 4,
                 "past_key / past_value must be [B, Hkv, Tmax, D], got ranks " << in[kIN_PAST_K].nbDims << ", "
                                                                              << in[kIN_PAST_V].nbDims);
    out[kOUT_CONTEXT].nbDims = 3;
    out[kOUT_CONTEXT].d[0] = qkv.d[0];
    out[kOUT_CONTEXT].d[1] = qkv.d[1];
    out[kOUT_CONTEXT].d[2] = eb.constant(int64_t(mH) * mD);
    DSATTN_CHECK(out[kOUT_CONTEXT].d[2] != nullptr, "IExprBuilder::constant returned null");
    out[kOUT_PRESENT_K] = in[kIN_PAST_K];
    out[kOUT_PRESENT_V] = in[kIN_PAST_V];
  }

  bool supportsImpl(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs, int32_t) const override {
    checkInputCount(nbInputs);
    DataType const t = io[pos].desc.type;
    DataType const T = io[kIN_QKV].desc.type;
    if (pos == kIN_QKV) return isFloatT(t);
    if (pos == kIN_PAST_K || pos == kIN_PAST_V) return t == T;
    if (pos == kIN_SEQ_LENS) return t == DataType::kINT32;
    if (pos == kIN_START_POS && pos < nbInputs) {
      Dims const d = io[pos].desc.dims;
      return isAbsent(0, 1, &d) || t == DataType::kINT32;
    }
    return t == T;  // outputs
  }

  void checkShapesImpl(Dims const* in, DataType const* types, int32_t nbInputs, Dims const* out,
                       int32_t) const override {
    checkInputCount(nbInputs);
    Dims const& qkv = in[kIN_QKV];
    expectRank(qkv, 3, "qkv", "[B, S, (H + 2*Hkv)*D]");
    expectDim(qkv, 2, qkvWidth(), "qkv", "(num_heads + 2*num_kv_heads)*head_size");
    int64_t const B = qkv.d[0];
    for (int32_t i : {int32_t(kIN_PAST_K), int32_t(kIN_PAST_V)}) {
      char const* name = i == kIN_PAST_K ? "past_key" : "past_value";
      expectRank(in[i], 4, name, "[B, Hkv, Tmax, D]");
      expectDim(in[i], 0, B, name, "B");
      expectDim(in[i], 1, mHkv, name, "num_kv_heads");
      expectDim(in[i], 3, mD, name, "head_size");
    }
    expectDim(in[kIN_PAST_V], 2, in[kIN_PAST_K].d[2], "past_value", "Tmax of past_key");
    expectRank(in[kIN_SEQ_LENS], 1, "seq_lens", "[B]");
    expectDim(in[kIN_SEQ_LENS], 0, B, "seq_lens", "B");
    DataType const T = types[kIN_QKV];
    DSATTN_CHECK(isFloatT(T), "qkv must be float32, float16 or bfloat16, got " << dataTypeName(T));
    DSATTN_CHECK(types[kIN_PAST_K] == T && types[kIN_PAST_V] == T,
                 "past_key / past_value types " << dataTypeName(types[kIN_PAST_K]) << " / "
                                                << dataTypeName(types[kIN_PAST_V]) << " differ from qkv type "
                                                << dataTypeName(T));
    DSATTN_CHECK(types[kIN_SEQ_LENS] == DataType::kINT32, "seq_lens must be int32, got "
                                                              << dataTypeName(types[kIN_SEQ_LENS]));
    if (!isAbsent(kIN_START_POS, nbInputs, in)) {
      expectRank(in[kIN_START_POS], 1, "start_pos", "[B]");
      expectDim(in[kIN_START_POS], 0, B, "start_pos", "B");
      DSATTN_CHECK(types[kIN_START_POS] == DataType::kINT32, "start_pos must be int32, got "
                                                                 << dataTypeName(types[kIN_START_POS]));
    }
    expectRank(out[kOUT_CONTEXT], 3, "context", "[B, S, H*D]");
    expectDim(out[kOUT_CONTEXT], 2, int64_t(mH) * mD, "context", "num_heads*head_size");
    for (int32_t o : {int32_t(kOUT_PRESENT_K), int32_t(kOUT_PRESENT_V)}) {
      Dims const& past = in[o];  // present_k <- past_key (1), present_v <- past_value (2)
      DSATTN_CHECK(out[o].nbDims == past.nbDims, "output " << o << " rank differs from its past cache");
      for (int32_t a = 0; a < past.nbDims; ++a) expectDim(out[o], a, past.d[a], o == 1 ? "present_key" : "present_value", "past dim");
    }
    // With every dim known (onShapeChange), let the kernels' own validation speak too.
    bool allKnown = true;
    for (int32_t i = 0; i < kIN_START_POS; ++i)
      for (int32_t a = 0; a < in[i].nbDims; ++a) allKnown = allKnown && known(in[i].d[a]);
    if (allKnown) {
      dsattn_softmax_context_params p = params(in, types, nbInputs);
      bindPlaceholders(p, nbInputs, in);
      char msg[512] = {0};
      DSATTN_CHECK(dsattn_softmax_context_validate(&p, msg, sizeof(msg)) == cudaSuccess, "kernel rejects shapes: " << msg);
    }
  }

  dsattn_softmax_context_params params(Dims const* in, DataType const* types, int32_t) const {
    dsattn_softmax_context_params p{};
    p.batch = in[kIN_QKV].d[0];
    p.seq_len = in[kIN_QKV].d[1];
    p.num_heads = mH;
    p.num_kv_heads = mHkv;
    p.head_size = mD;
    p.max_seq_len = in[kIN_PAST_K].d[2];
    p.scale = mScale;
    p.rope_theta = mTheta;
    p.qkv_layout = mLayout;
    p.causal = mCausal;
    p.local_window = mWindow;
    p.rotary_dim = mRotary;
    p.rotary_style = mRotaryStyle;
    p.dtype = toKernelDtype(types[kIN_QKV]);
    return p;
  }

  void bindPlaceholders(dsattn_softmax_context_params& p, int32_t nbInputs, Dims const* in) const {
    p.qkv = workspaceQueryPointer(0);
    p.key_cache = workspaceQueryPointer(1);
    p.value_cache = workspaceQueryPointer(2);
    p.seq_lens = static_cast<int32_t const*>(workspaceQueryPointer(3));
    p.start_pos = isAbsent(kIN_START_POS, nbInputs, in) ? nullptr : static_cast<int32_t const*>(workspaceQueryPointer(4));
    p.alibi_slopes = mSlopes.empty() ? nullptr : static_cast<float const*>(workspaceQueryPointer(5));
    p.context = workspaceQueryPointer(6);
    p.status = static_cast<int32_t*>(workspaceQueryPointer(7));
  }

  size_t workspaceImpl(Dims const* inMax, DataType const* types, int32_t nbInputs) const override {
    checkInputCount(nbInputs);
    // The kernels pick a decode path (small S, split-KV partials) or a prefill path (rotated q) by
    // S, and their scratch is not monotone across that switch. The engine runs any S up to the
    // profile's max with this one size, so take the maximum over the decode range and the max S.
    dsattn_softmax_context_params p = params(inMax, types, nbInputs);
    bindPlaceholders(p, nbInputs, inMax);
    int64_t const sMax = p.seq_len;
    size_t ws = 0;
    for (int64_t s = 1; s <= sMax; s = (s < 16 ? s + 1 : sMax)) {
      p.seq_len = s;
      size_t const w = dsattn_softmax_context_workspace_size(&p);
      ws = w > ws ? w : ws;
      if (s == sMax) break;
    }
    return kSTATUS_BYTES + ws;
  }

  void uploadSlopes() {
    if (mSlopes.empty() || mSlopesDev != nullptr) return;
    DSATTN_CUDA_CHECK(cudaMalloc(&mSlopesDev, mSlopes.size() * sizeof(float)));
    DSATTN_CUDA_CHECK(cudaMemcpy(mSlopesDev, mSlopes.data(), mSlopes.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  void attachImpl() override { uploadSlopes(); }

  void enqueueImpl(PluginTensorDesc const* inDesc, PluginTensorDesc const* outDesc, int32_t nbInputs,
                   void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) override {
    // Shapes (row-major):
    //   qkv           T     [B, S, (H + 2*Hkv)*D]   layout per qkv_layout
    //   past_key      T     [B, Hkv, Tmax, D]       == present_key when aliased (in place)
    //   past_value    T     [B, Hkv, Tmax, D]       == present_value when aliased
    //   seq_lens      int32 [B]                     device; tokens already cached
    //   start_pos     int32 [B]                     optional (input 4); left padding
    //   context       T     [B, S, H*D]
    //   workspace     [status int32 | 256 B pad][kernel scratch]
    TensorDescs const in(inDesc, nbInputs);
    auto const& dims = in.dims;
    auto const& types = in.types;
    dsattn_softmax_context_params p = params(dims.data(), types.data(), nbInputs);
    DSATTN_CHECK(workspace != nullptr, "no workspace (the status word lives there)");
    if (!mSlopes.empty() && mSlopesDev == nullptr) {
      checkNotCapturing(stream, "the ALiBi slopes upload");
      uploadSlopes();
    }
    size_t const cacheBytes = static_cast<size_t>(volume(dims[kIN_PAST_K])) * dataTypeSize(types[kIN_QKV]);
    // Without aliasing TensorRT gives present_* their own buffers: start them as a copy of past_*.
    for (int32_t o : {int32_t(kOUT_PRESENT_K), int32_t(kOUT_PRESENT_V)}) {
      if (outputs[o] != inputs[o]) {
        DSATTN_CUDA_CHECK(cudaMemcpyAsync(outputs[o], inputs[o], cacheBytes, cudaMemcpyDeviceToDevice, stream));
      }
    }
    p.qkv = inputs[kIN_QKV];
    p.key_cache = outputs[kOUT_PRESENT_K];
    p.value_cache = outputs[kOUT_PRESENT_V];
    p.seq_lens = static_cast<int32_t const*>(inputs[kIN_SEQ_LENS]);
    p.start_pos = isAbsent(kIN_START_POS, nbInputs, dims.data()) ? nullptr
                                                                  : static_cast<int32_t const*>(inputs[kIN_START_POS]);
    p.alibi_slopes = mSlopes.empty() ? nullptr : mSlopesDev;
    p.context = outputs[kOUT_CONTEXT];
    p.status = static_cast<int32_t*>(workspace);
    void* const kernelWs = static_cast<char*>(workspace) + kSTATUS_BYTES;
    size_t const need = dsattn_softmax_context_workspace_size(&p);
    DSATTN_CUDA_CHECK(dsattn_softmax_context(&p, need ? kernelWs : nullptr, need, stream));
    int64_t const contextBytes = volume(outDesc[kOUT_CONTEXT].dims) * int64_t(dataTypeSize(types[kIN_QKV]));
    DSATTN_CUDA_CHECK(dsattnPoisonOnStatus(p.status, p.context, contextBytes, stream));
  }

 private:
  int32_t mH = 0, mHkv = 0, mD = 0;
  float mScale = 1.f;
  int32_t mLayout = 0, mCausal = 1, mWindow = 0, mRotary = 0, mRotaryStyle = 0;
  float mTheta = 10000.f;
  std::vector<float> mSlopes;
  float* mSlopesDev = nullptr;
};

PluginBase* makePlugin(AttrValues attrs) { return new SoftmaxContextPlugin(std::move(attrs)); }

}  // namespace

IPluginCreatorInterface* softmaxContextCreator() {
  static Creator creator(kNAME, &ops::softmaxContextAttrTable(), &makePlugin);
  return &creator;
}

}  // namespace plugin
}  // namespace dsattn
