// libdsattn_ort.so: the three dsattn ops as ONNX Runtime custom ops for the CUDA execution provider,
// over the same kernels as the TensorRT plugins (plugins/kernels, C ABI). Loaded with
// SessionOptions.register_custom_ops_library(path) (Python) / RegisterCustomOpsLibrary (C), which
// calls RegisterCustomOps, the only symbol the library exports (dsattn_ort.map).
//
// Written against ONNX Runtime's C API only (no C++ wrapper: fewer headers to bring, and every
// OrtStatus is handled explicitly). The OrtApi is requested at the version of the header this is
// compiled against; the C API is append-only, so the library loads in that release and every later
// one (plugins/ort/README.md names the release).
//
// Per op and element type T (float32, float16, bfloat16) one OrtCustomOp is registered, with concrete
// input/output types: ONNX Runtime infers a custom op's output types from the variant whose input
// types match, and with a type-generic declaration QKVGemm's output would take the int8 weight's
// type when no other T input follows it. QKVGemm has a float-weight and an int8-weight variant per T.
//
// Attributes are read and checked when ONNX Runtime creates the kernel (session creation), through
// the runtime-neutral tables of plugins/common/op_attrs.h; errors name the op, the node, the
// attribute and its value. Shapes are checked when the node runs (plugins/common/op_shapes.h).
#include <cuda_runtime.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "int8_matmul.h"
#include "onnxruntime_c_api.h"
#include "op_attrs.h"
#include "op_shapes.h"
#include "qkv_gemm.h"
#include "softmax_context.h"

// Needed from the header: InferOutputShapeFn (1.17), KernelInfoGetAllocator and GetMayInplace (1.18).
static_assert(ORT_API_VERSION >= 18, "libdsattn_ort.so needs ONNX Runtime C API headers of release 1.18 or later");

// plugins/softmax_context/poison_on_status.cu: fills `context` with NaN when the kernels' status
// word is nonzero (used where no host round trip is possible: CUDA graph capture).
cudaError_t dsattnPoisonOnStatus(int32_t const* status, void* context, int64_t bytes, cudaStream_t stream);

namespace dsattn {
namespace ort {
namespace {

using ops::ElemType;
using ops::TensorInfo;

constexpr char const* kDOMAIN = "dsattn";
constexpr char const* kPROVIDER = "CUDAExecutionProvider";
constexpr int kOP_VERSION = 1;
// SoftmaxContext's device status word gets its own allocation (the allocator's granule).
constexpr size_t kSTATUS_BYTES = 256;

// ---- errors ----------------------------------------------------------------------------------

// An error on its way to ONNX Runtime: the code it becomes and the full message.
class Error : public std::runtime_error {
 public:
  Error(OrtErrorCode code, std::string const& msg) : std::runtime_error(msg), code(code) {}
  OrtErrorCode code;
};

#define DSATTN_ORT_FAIL(code, msg)           \
  do {                                       \
    std::ostringstream dsattn_ort_os_;       \
    dsattn_ort_os_ << msg;                   \
    throw Error(code, dsattn_ort_os_.str()); \
  } while (0)

// Throws for a failed OrtStatus (released here), prefixing what was being done.
void check(OrtApi const* api, OrtStatus* st, char const* what) {
  if (st == nullptr) return;
  std::string const msg = api->GetErrorMessage(st);
  OrtErrorCode const code = api->GetErrorCode(st);
  api->ReleaseStatus(st);
  DSATTN_ORT_FAIL(code, what << ": " << msg);
}

void checkCuda(cudaError_t e, char const* what) {
  if (e != cudaSuccess) {
    DSATTN_ORT_FAIL(ORT_RUNTIME_EXCEPTION, what << " failed: " << cudaGetErrorName(e) << " (" << cudaGetErrorString(e)
                                                << ")");
  }
}

// Runs fn, turning every exception into an OrtStatus prefixed with `where` (op and node).
template <typename Fn>
OrtStatus* guarded(OrtApi const* api, std::string const& where, Fn&& fn) noexcept {
  try {
    fn();
    return nullptr;
  } catch (Error const& e) {
    return api->CreateStatus(e.code, (where + ": " + e.what()).c_str());
  } catch (ops::AttrError const& e) {
    return api->CreateStatus(ORT_INVALID_ARGUMENT, (where + ": " + e.what()).c_str());
  } catch (ops::ShapeError const& e) {
    return api->CreateStatus(ORT_INVALID_ARGUMENT, (where + ": " + e.what()).c_str());
  } catch (std::exception const& e) {
    return api->CreateStatus(ORT_RUNTIME_EXCEPTION, (where + ": " + e.what()).c_str());
  } catch (...) {
    return api->CreateStatus(ORT_RUNTIME_EXCEPTION, (where + ": unknown exception").c_str());
  }
}

// ---- types -----------------------------------------------------------------------------------

ONNXTensorElementDataType toOnnx(ElemType t) {
  switch (t) {
    case ElemType::kFLOAT32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case ElemType::kFLOAT16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case ElemType::kBFLOAT16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    case ElemType::kINT8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    case ElemType::kINT32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case ElemType::kOTHER: break;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

ElemType fromOnnx(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return ElemType::kFLOAT32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return ElemType::kFLOAT16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return ElemType::kBFLOAT16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return ElemType::kINT8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return ElemType::kINT32;
    default: break;
  }
  return ElemType::kOTHER;
}

// Type and dims of a type/shape info (released by the caller).
void readInfo(OrtApi const* api, OrtTensorTypeAndShapeInfo const* info, ElemType* type, std::vector<int64_t>* dims) {
  ONNXTensorElementDataType t = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  check(api, api->GetTensorElementType(info, &t), "GetTensorElementType");
  size_t n = 0;
  check(api, api->GetDimensionsCount(info, &n), "GetDimensionsCount");
  dims->assign(n, 0);
  if (n) check(api, api->GetDimensions(info, dims->data(), n), "GetDimensions");
  *type = fromOnnx(t);
}

// ---- attributes ------------------------------------------------------------------------------

std::string nodeName(OrtApi const* api, OrtKernelInfo const* info) {
  size_t n = 0;
  check(api, api->KernelInfo_GetNodeName(info, nullptr, &n), "KernelInfo_GetNodeName");
  std::string s(n, '\0');
  if (n) check(api, api->KernelInfo_GetNodeName(info, &s[0], &n), "KernelInfo_GetNodeName");
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

// What the node holds under one name. OrtKernelInfo has no attribute listing and no kind query, so
// each getter is tried: exactly one succeeds for a present attribute of a supported kind.
struct AttrProbe {
  enum Kind { kABSENT, kINT, kFLOAT, kFLOATS, kSTRING } kind = kABSENT;
  int64_t i = 0;
  float f = 0.f;
  std::vector<float> fs;
  std::string s;
};

bool tryStatus(OrtApi const* api, OrtStatus* st) {
  if (st == nullptr) return true;
  api->ReleaseStatus(st);
  return false;
}

// The array and string getters do not reject every other kind (ONNX Runtime's array getter reads a
// STRING attribute as an empty FLOATS), so the kind the table expects is tried first and the others
// only name a mismatch.
bool probeAs(OrtApi const* api, OrtKernelInfo const* info, char const* name, AttrProbe::Kind kind, AttrProbe& p) {
  size_t n = 0;
  switch (kind) {
    case AttrProbe::kINT:
      if (!tryStatus(api, api->KernelInfoGetAttribute_int64(info, name, &p.i))) return false;
      break;
    case AttrProbe::kFLOAT:
      if (!tryStatus(api, api->KernelInfoGetAttribute_float(info, name, &p.f))) return false;
      break;
    case AttrProbe::kFLOATS:
      if (!tryStatus(api, api->KernelInfoGetAttributeArray_float(info, name, nullptr, &n))) return false;
      p.fs.resize(n);
      if (n) check(api, api->KernelInfoGetAttributeArray_float(info, name, p.fs.data(), &n), name);
      break;
    case AttrProbe::kSTRING:
      if (!tryStatus(api, api->KernelInfoGetAttribute_string(info, name, nullptr, &n))) return false;
      p.s.assign(n, '\0');
      if (n) check(api, api->KernelInfoGetAttribute_string(info, name, &p.s[0], &n), name);
      while (!p.s.empty() && p.s.back() == '\0') p.s.pop_back();
      break;
    case AttrProbe::kABSENT:
      return false;
  }
  p.kind = kind;
  return true;
}

AttrProbe probeAttr(OrtApi const* api, OrtKernelInfo const* info, char const* name, AttrProbe::Kind expected) {
  AttrProbe p;
  if (probeAs(api, info, name, expected, p)) return p;
  for (AttrProbe::Kind k : {AttrProbe::kINT, AttrProbe::kFLOAT, AttrProbe::kSTRING, AttrProbe::kFLOATS}) {
    if (k != expected && probeAs(api, info, name, k, p)) return p;
  }
  return p;
}

char const* probeKindName(AttrProbe::Kind k) {
  switch (k) {
    case AttrProbe::kINT: return "INT";
    case AttrProbe::kFLOAT: return "FLOAT";
    case AttrProbe::kFLOATS: return "FLOATS";
    case AttrProbe::kSTRING: return "STRING";
    case AttrProbe::kABSENT: break;
  }
  return "absent";
}

// The node's attributes per the op's table: defaults applied, ranges checked (op_attrs.h).
class NodeAttrs {
 public:
  NodeAttrs(OrtApi const* api, OrtKernelInfo const* info, std::vector<ops::AttrSpec> const& table) : mTable(table) {
    mValues.resize(table.size());
    for (size_t k = 0; k < table.size(); ++k) {
      ops::AttrSpec const& spec = table[k];
      Value& v = mValues[k];
      AttrProbe::Kind const want = spec.kind == ops::AttrKind::kINT     ? AttrProbe::kINT
                                   : spec.kind == ops::AttrKind::kFLOAT ? AttrProbe::kFLOAT
                                                                        : AttrProbe::kFLOATS;
      AttrProbe const p = probeAttr(api, info, spec.name, want);
      if (p.kind == AttrProbe::kABSENT) {
        if (spec.required) throw ops::AttrError(std::string("required attribute '") + spec.name + "' is missing");
        v.set = spec.hasDefault;
        v.i = static_cast<int32_t>(spec.defaultValue);
        v.f = static_cast<float>(spec.defaultValue);
        continue;
      }
      if (p.kind != want) {
        throw ops::AttrError(std::string("attribute ") + spec.name + " is " + probeKindName(p.kind) + ", expected " +
                             ops::attrKindName(spec.kind));
      }
      v.set = true;
      if (want == AttrProbe::kINT) v.i = ops::checkInt(spec, p.i);
      if (want == AttrProbe::kFLOAT) v.f = ops::checkFloat(spec, p.f);
      if (want == AttrProbe::kFLOATS) {
        ops::checkFloats(spec, p.fs);
        v.fs = p.fs;
      }
    }
    // OPS.md: every node carries these two strings; when present they must name this library.
    for (char const* name : {"plugin_version", "plugin_namespace"}) {
      AttrProbe const p = probeAttr(api, info, name, AttrProbe::kSTRING);
      if (p.kind == AttrProbe::kABSENT) continue;
      if (p.kind != AttrProbe::kSTRING) {
        throw ops::AttrError(std::string("attribute ") + name + " is " + probeKindName(p.kind) + ", expected STRING");
      }
      ops::checkPluginString(name, p.s);
    }
  }

  bool isSet(char const* name) const { return mValues[index(name)].set; }
  int32_t getInt(char const* name) const { return mValues[index(name)].i; }
  float getFloat(char const* name) const { return mValues[index(name)].f; }
  std::vector<float> const& getFloats(char const* name) const { return mValues[index(name)].fs; }

 private:
  struct Value {
    bool set = false;
    int32_t i = 0;
    float f = 0.f;
    std::vector<float> fs;
  };
  size_t index(char const* name) const {
    for (size_t k = 0; k < mTable.size(); ++k) {
      if (std::strcmp(mTable[k].name, name) == 0) return k;
    }
    throw std::logic_error(std::string("no attribute '") + name + "' in the op's table");
  }
  std::vector<ops::AttrSpec> const& mTable;
  std::vector<Value> mValues;
};

// ---- kernels ---------------------------------------------------------------------------------

// Device scratch from ONNX Runtime's allocator for the CUDA EP, freed when the compute call returns
// (stream-ordered reuse: ONNX Runtime runs the next node on the same stream).
class Scratch {
 public:
  Scratch(OrtApi const* api, OrtAllocator* alloc, size_t bytes) : mApi(api), mAlloc(alloc) {
    if (bytes) check(api, api->AllocatorAlloc(alloc, bytes, &mPtr), "workspace allocation");
  }
  ~Scratch() {
    if (mPtr) {
      OrtStatus* st = mApi->AllocatorFree(mAlloc, mPtr);
      if (st) mApi->ReleaseStatus(st);
    }
  }
  Scratch(Scratch const&) = delete;
  Scratch& operator=(Scratch const&) = delete;
  void* get() const { return mPtr; }

 private:
  OrtApi const* mApi;
  OrtAllocator* mAlloc;
  void* mPtr = nullptr;
};

struct Input {
  OrtValue const* value = nullptr;
  void const* data = nullptr;
};

class KernelBase {
 public:
  KernelBase(OrtApi const* api, OrtKernelInfo const* info, char const* op) : mApi(api), mOp(op) {
    mWhere = std::string("dsattn::") + op + " node '" + nodeName(api, info) + "'";
    // The EP's default (device) allocator for workspaces.
    check(api, api->KernelInfoGetAllocator(info, OrtMemTypeDefault, &mAlloc), "KernelInfoGetAllocator");
  }
  virtual ~KernelBase() {
    if (mAlloc) mApi->ReleaseAllocator(mAlloc);
  }
  KernelBase(KernelBase const&) = delete;
  KernelBase& operator=(KernelBase const&) = delete;

  std::string const& where() const { return mWhere; }
  OrtApi const* api() const { return mApi; }
  virtual void compute(OrtKernelContext* ctx) = 0;

 protected:
  cudaStream_t stream(OrtKernelContext* ctx) const {
    void* s = nullptr;
    check(mApi, mApi->KernelContext_GetGPUComputeStream(ctx, &s), "KernelContext_GetGPUComputeStream");
    if (s == nullptr) DSATTN_ORT_FAIL(ORT_EP_FAIL, "no GPU compute stream: the node was not placed on " << kPROVIDER);
    return static_cast<cudaStream_t>(s);
  }

  // Inputs 0..count-1 as TensorInfo + data. Absent: beyond the node's inputs, an empty name, or an
  // optional input (index >= firstOptional) that is a 1-D tensor of shape [0], which is how the
  // exporter writes an absent input that precedes a present one (OPS.md).
  void inputs(OrtKernelContext* ctx, size_t count, size_t firstOptional, std::vector<TensorInfo>* infos,
              std::vector<Input>* data) const {
    size_t n = 0;
    check(mApi, mApi->KernelContext_GetInputCount(ctx, &n), "KernelContext_GetInputCount");
    infos->assign(count, TensorInfo{});
    data->assign(count, Input{});
    for (size_t i = 0; i < count && i < n; ++i) {
      OrtValue const* v = nullptr;
      check(mApi, mApi->KernelContext_GetInput(ctx, i, &v), "KernelContext_GetInput");
      if (v == nullptr) continue;
      OrtTensorTypeAndShapeInfo* ti = nullptr;
      check(mApi, mApi->GetTensorTypeAndShape(v, &ti), "GetTensorTypeAndShape");
      std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> guard(
          ti, mApi->ReleaseTensorTypeAndShapeInfo);
      TensorInfo& t = (*infos)[i];
      readInfo(mApi, ti, &t.type, &t.dims);
      if (i >= firstOptional && t.dims.size() == 1 && t.dims[0] == 0) {
        t = TensorInfo{};
        continue;
      }
      t.present = true;
      (*data)[i].value = v;
      void const* p = nullptr;
      check(mApi, mApi->GetTensorData(v, &p), "GetTensorData");
      (*data)[i].data = p;
    }
  }

  void* output(OrtKernelContext* ctx, size_t index, std::vector<int64_t> const& dims) const {
    OrtValue* v = nullptr;
    check(mApi, mApi->KernelContext_GetOutput(ctx, index, dims.data(), dims.size(), &v), "KernelContext_GetOutput");
    void* p = nullptr;
    check(mApi, mApi->GetTensorMutableData(v, &p), "GetTensorMutableData");
    return p;
  }

  size_t outputCount(OrtKernelContext* ctx) const {
    size_t n = 0;
    check(mApi, mApi->KernelContext_GetOutputCount(ctx, &n), "KernelContext_GetOutputCount");
    return n;
  }

  OrtApi const* mApi;
  char const* mOp;
  std::string mWhere;
  OrtAllocator* mAlloc = nullptr;
};

class QKVGemmKernel final : public KernelBase {
 public:
  QKVGemmKernel(OrtApi const* api, OrtKernelInfo const* info) : KernelBase(api, info, "QKVGemm") {
    NodeAttrs const a(api, info, ops::qkvGemmAttrTable());
    mAttrs.norm_type = a.getInt("norm_type");
    mAttrs.epsilon = a.getFloat("epsilon");
    mAttrs.quantized = a.getInt("quantized");
    mAttrs.group_size = a.getInt("group_size");
    mAttrs.emit_normed = a.getInt("emit_normed");
    ops::checkQKVGemm(mAttrs);
    size_t nOut = 0;
    check(api, api->KernelInfo_GetOutputCount(info, &nOut), "KernelInfo_GetOutputCount");
    if (nOut != static_cast<size_t>(1 + mAttrs.emit_normed)) {
      throw ops::AttrError("emit_normed=" + std::to_string(mAttrs.emit_normed) + " needs " +
                           std::to_string(1 + mAttrs.emit_normed) + " output(s), the node has " + std::to_string(nOut));
    }
    // One cuBLASLt context per kernel, created here (session creation), never under graph capture.
    checkCuda(dsattn_gemm_ctx_create(&mCtx), "dsattn_gemm_ctx_create");
  }
  ~QKVGemmKernel() override {
    if (mCtx) dsattn_gemm_ctx_destroy(mCtx);
  }

  void compute(OrtKernelContext* ctx) override {
    std::vector<TensorInfo> in;
    std::vector<Input> d;
    inputs(ctx, ops::kQKV_NUM_INPUTS, ops::kQKV_BIAS, &in, &d);
    ops::QKVGemmShape const s = ops::checkQKVGemmInputs(mAttrs, in);
    dsattn_qkv_gemm_params p{};
    p.M = s.B * s.S;
    p.N = s.N;
    p.K = s.K;
    p.group_size = mAttrs.group_size;
    p.norm_type = mAttrs.norm_type;
    p.quantized = mAttrs.quantized;
    p.emit_normed = mAttrs.emit_normed;
    p.epsilon = mAttrs.epsilon;
    p.dtype = ops::kernelDtype(s.T);
    p.input = d[ops::kQKV_INPUT].data;
    p.weight = d[ops::kQKV_WEIGHT].data;
    p.bias = d[ops::kQKV_BIAS].data;
    p.gamma = d[ops::kQKV_GAMMA].data;
    p.beta = d[ops::kQKV_BETA].data;
    p.weight_scale = static_cast<float const*>(d[ops::kQKV_SCALE].data);
    p.qkv = output(ctx, 0, {s.B, s.S, s.N});
    p.normed = mAttrs.emit_normed ? output(ctx, 1, {s.B, s.S, s.K}) : nullptr;
    if (p.M == 0) return;
    cudaStream_t const st = stream(ctx);
    size_t const need = dsattn_qkv_gemm_workspace_size(&p);
    Scratch ws(mApi, mAlloc, need);
    checkCuda(dsattn_qkv_gemm(mCtx, &p, ws.get(), need, st), "dsattn_qkv_gemm");
  }

 private:
  ops::QKVGemmAttrs mAttrs;
  dsattn_gemm_ctx* mCtx = nullptr;
};

class Int8MatMulKernel final : public KernelBase {
 public:
  Int8MatMulKernel(OrtApi const* api, OrtKernelInfo const* info) : KernelBase(api, info, "Int8MatMul") {
    NodeAttrs const a(api, info, ops::int8MatMulAttrTable());
    mAttrs.group_size = a.getInt("group_size");
    ops::checkInt8MatMul(mAttrs);
  }

  void compute(OrtKernelContext* ctx) override {
    std::vector<TensorInfo> in;
    std::vector<Input> d;
    inputs(ctx, ops::kI8_NUM_INPUTS, ops::kI8_BIAS, &in, &d);
    ops::Int8MatMulShape const s = ops::checkInt8MatMulInputs(mAttrs, in);
    dsattn_int8_matmul_params p{};
    p.M = s.M;
    p.N = s.N;
    p.K = s.K;
    p.group_size = mAttrs.group_size;
    p.dtype = ops::kernelDtype(s.T);
    p.input = d[ops::kI8_INPUT].data;
    p.weight = static_cast<int8_t const*>(d[ops::kI8_WEIGHT].data);
    p.weight_scale = static_cast<float const*>(d[ops::kI8_SCALE].data);
    p.bias = d[ops::kI8_BIAS].data;
    p.output = output(ctx, 0, s.outDims);
    if (p.M == 0) return;
    cudaStream_t const st = stream(ctx);
    size_t const need = dsattn_int8_matmul_workspace_size(&p);
    Scratch ws(mApi, mAlloc, need);
    checkCuda(dsattn_int8_matmul(&p, ws.get(), need, st), "dsattn_int8_matmul");
  }

 private:
  ops::Int8MatMulAttrs mAttrs;
};

class SoftmaxContextKernel final : public KernelBase {
 public:
  SoftmaxContextKernel(OrtApi const* api, OrtKernelInfo const* info) : KernelBase(api, info, "SoftmaxContext") {
    NodeAttrs const a(api, info, ops::softmaxContextAttrTable());
    mAttrs.num_heads = a.getInt("num_heads");
    mAttrs.head_size = a.getInt("head_size");
    bool const hasKv = a.isSet("num_kv_heads"), hasScale = a.isSet("scale");
    if (hasKv) mAttrs.num_kv_heads = a.getInt("num_kv_heads");
    if (hasScale) mAttrs.scale = a.getFloat("scale");
    mAttrs.qkv_layout = a.getInt("qkv_layout");
    mAttrs.causal = a.getInt("causal");
    mAttrs.local_window = a.getInt("local_window");
    mAttrs.rotary_dim = a.getInt("rotary_dim");
    mAttrs.rotary_style = a.getInt("rotary_style");
    mAttrs.rope_theta = a.getFloat("rope_theta");
    mAttrs.alibi_slopes = a.getFloats("alibi_slopes");
    ops::resolveSoftmaxContext(mAttrs, hasKv, hasScale);
    // The slopes live on the device for the kernel's lifetime: uploaded here (session creation),
    // never under graph capture.
    if (!mAttrs.alibi_slopes.empty()) {
      size_t const bytes = mAttrs.alibi_slopes.size() * sizeof(float);
      checkCuda(cudaMalloc(&mSlopesDev, bytes), "cudaMalloc(alibi_slopes)");
      checkCuda(cudaMemcpy(mSlopesDev, mAttrs.alibi_slopes.data(), bytes, cudaMemcpyHostToDevice),
                "cudaMemcpy(alibi_slopes)");
    }
  }
  ~SoftmaxContextKernel() override {
    if (mSlopesDev) cudaFree(mSlopesDev);
  }

  void compute(OrtKernelContext* ctx) override {
    // Shapes (row-major):
    //   qkv           T     [B, S, (H + 2*Hkv)*D]   layout per qkv_layout
    //   past_key      T     [B, Hkv, Tmax, D]       the same buffer as present_key under I/O binding
    //   past_value    T     [B, Hkv, Tmax, D]       likewise present_value
    //   seq_lens      int32 [B]                     device; tokens already cached
    //   start_pos     int32 [B]                     optional (input 4); left padding
    //   context       T     [B, S, H*D]
    std::vector<TensorInfo> in;
    std::vector<Input> d;
    inputs(ctx, ops::kSC_NUM_INPUTS, ops::kSC_START_POS, &in, &d);
    ops::SoftmaxContextShape const s = ops::checkSoftmaxContextInputs(mAttrs, in);
    size_t const tsize = ops::elemSize(s.T);
    void* const context = output(ctx, 0, {s.B, s.S, int64_t(mAttrs.num_heads) * mAttrs.head_size});
    void* const presentK = output(ctx, 1, in[ops::kSC_PAST_KEY].dims);
    void* const presentV = output(ctx, 2, in[ops::kSC_PAST_VALUE].dims);
    cudaStream_t const st = stream(ctx);

    dsattn_softmax_context_params p{};
    p.batch = s.B;
    p.seq_len = s.S;
    p.num_heads = mAttrs.num_heads;
    p.num_kv_heads = mAttrs.num_kv_heads;
    p.head_size = mAttrs.head_size;
    p.max_seq_len = s.Tmax;
    p.scale = mAttrs.scale;
    p.rope_theta = mAttrs.rope_theta;
    p.qkv_layout = mAttrs.qkv_layout;
    p.causal = mAttrs.causal;
    p.local_window = mAttrs.local_window;
    p.rotary_dim = mAttrs.rotary_dim;
    p.rotary_style = mAttrs.rotary_style;
    p.dtype = ops::kernelDtype(s.T);
    p.qkv = d[ops::kSC_QKV].data;
    p.key_cache = presentK;
    p.value_cache = presentV;
    p.seq_lens = static_cast<int32_t const*>(d[ops::kSC_SEQ_LENS].data);
    p.start_pos = static_cast<int32_t const*>(d[ops::kSC_START_POS].data);
    p.alibi_slopes = mSlopesDev;
    p.context = context;

    // The cache is updated in place when present_* is past_* (I/O binding of one buffer to both, or
    // ONNX Runtime's in-place reuse). Otherwise present_* starts as a copy of past_*, so rows outside
    // the written range carry over and an overflow leaves present_* equal to past_*.
    size_t const cacheBytes = static_cast<size_t>(ops::numElements(in[ops::kSC_PAST_KEY].dims)) * tsize;
    if (presentK != d[ops::kSC_PAST_KEY].data && cacheBytes) {
      checkCuda(cudaMemcpyAsync(presentK, d[ops::kSC_PAST_KEY].data, cacheBytes, cudaMemcpyDeviceToDevice, st),
                "copy past_key -> present_key");
    }
    if (presentV != d[ops::kSC_PAST_VALUE].data && cacheBytes) {
      checkCuda(cudaMemcpyAsync(presentV, d[ops::kSC_PAST_VALUE].data, cacheBytes, cudaMemcpyDeviceToDevice, st),
                "copy past_value -> present_value");
    }
    if (s.B == 0 || s.S == 0) return;

    Scratch status(mApi, mAlloc, kSTATUS_BYTES);  // the kernels' device status word
    p.status = static_cast<int32_t*>(status.get());
    char msg[512] = {0};
    if (dsattn_softmax_context_validate(&p, msg, sizeof(msg)) != cudaSuccess) {
      DSATTN_ORT_FAIL(ORT_INVALID_ARGUMENT, "the kernels reject the shapes: " << msg);
    }
    size_t const need = dsattn_softmax_context_workspace_size(&p);
    Scratch ws(mApi, mAlloc, need);
    checkCuda(dsattn_softmax_context(&p, need ? ws.get() : nullptr, need, st), "dsattn_softmax_context");

    // A bad row (seq_lens[b] + S > Tmax, seq_lens[b] < 0, start_pos[b] outside [0, seq_lens[b] + S])
    // is found on the device; the kernels then write nothing and set the status word. ONNX Runtime
    // takes errors from compute, so the status is brought to the host and becomes this node's error.
    // Under CUDA graph capture no host round trip is possible (and a replay does not run this code):
    // there the context is filled with NaN instead, as the TensorRT plugin does.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    checkCuda(cudaStreamIsCapturing(st, &capture), "cudaStreamIsCapturing");
    if (capture != cudaStreamCaptureStatusNone) {
      int64_t const contextBytes = s.B * s.S * int64_t(mAttrs.num_heads) * mAttrs.head_size * int64_t(tsize);
      checkCuda(dsattnPoisonOnStatus(p.status, context, contextBytes, st), "poison-on-status launch");
      return;
    }
    int32_t hostStatus = 0;
    checkCuda(cudaMemcpyAsync(&hostStatus, p.status, sizeof(hostStatus), cudaMemcpyDeviceToHost, st),
              "status read-back");
    checkCuda(cudaStreamSynchronize(st), "cudaStreamSynchronize (status read-back)");
    if (hostStatus != 0) {
      int64_t const b = hostStatus - 1;
      int32_t row[2] = {0, 0};  // seq_lens[b], start_pos[b] (0 when absent), for the message
      checkCuda(cudaMemcpy(&row[0], p.seq_lens + b, sizeof(int32_t), cudaMemcpyDeviceToHost), "seq_lens read-back");
      if (p.start_pos) {
        checkCuda(cudaMemcpy(&row[1], p.start_pos + b, sizeof(int32_t), cudaMemcpyDeviceToHost), "start_pos read-back");
      }
      DSATTN_ORT_FAIL(ORT_INVALID_ARGUMENT,
                      "KV cache overflow or bad row " << b << ": seq_lens[" << b << "]=" << row[0] << ", S=" << s.S
                                                      << ", start_pos[" << b << "]=" << row[1] << ", Tmax=" << s.Tmax
                                                      << " (needs 0 <= seq_lens, seq_lens + S <= Tmax, 0 <= start_pos"
                                                      << " <= seq_lens + S); nothing was written");
    }
  }

 private:
  ops::SoftmaxContextAttrs mAttrs;
  float* mSlopesDev = nullptr;
};

// ---- shape inference -------------------------------------------------------------------------

// Type and shape (values and symbols) of one input; false when the input has no rank information.
struct InferShape {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
  std::vector<std::string> symbols;
};

bool inferInput(OrtApi const* api, OrtShapeInferContext* ctx, size_t index, InferShape* out) {
  size_t n = 0;
  check(api, api->ShapeInferContext_GetInputCount(ctx, &n), "ShapeInferContext_GetInputCount");
  if (index >= n) return false;
  // The context owns the info it hands out (ONNX Runtime frees it with the context): not released here.
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (!tryStatus(api, api->ShapeInferContext_GetInputTypeShape(ctx, index, &info)) || info == nullptr) return false;
  check(api, api->GetTensorElementType(info, &out->type), "GetTensorElementType");
  size_t rank = 0;
  check(api, api->GetDimensionsCount(info, &rank), "GetDimensionsCount");
  if (rank == 0) return false;  // no shape known (the ops take no scalars)
  out->dims.assign(rank, -1);
  check(api, api->GetDimensions(info, out->dims.data(), rank), "GetDimensions");
  std::vector<char const*> sym(rank, nullptr);
  check(api, api->GetSymbolicDimensions(info, sym.data(), rank), "GetSymbolicDimensions");
  out->symbols.assign(rank, std::string());
  for (size_t i = 0; i < rank; ++i) out->symbols[i] = sym[i] ? sym[i] : "";
  return true;
}

void inferOutput(OrtApi const* api, OrtShapeInferContext* ctx, size_t index, InferShape const& s) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(api, api->CreateTensorTypeAndShapeInfo(&info), "CreateTensorTypeAndShapeInfo");
  std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> guard(
      info, api->ReleaseTensorTypeAndShapeInfo);
  check(api, api->SetTensorElementType(info, s.type), "SetTensorElementType");
  check(api, api->SetDimensions(info, s.dims.data(), s.dims.size()), "SetDimensions");
  std::vector<char const*> sym(s.symbols.size());
  for (size_t i = 0; i < sym.size(); ++i) sym[i] = s.symbols[i].c_str();
  check(api, api->SetSymbolicDimensions(info, sym.data(), sym.size()), "SetSymbolicDimensions");
  check(api, api->ShapeInferContext_SetOutputTypeShape(ctx, index, info), "ShapeInferContext_SetOutputTypeShape");
}

// An INT attribute in shape inference, or `fallback` when the node does not carry one.
int64_t inferIntAttr(OrtApi const* api, OrtShapeInferContext* ctx, char const* name, int64_t fallback) {
  OrtOpAttr const* attr = nullptr;
  if (!tryStatus(api, api->ShapeInferContext_GetAttribute(ctx, name, &attr)) || attr == nullptr) return fallback;
  int64_t v = fallback;
  size_t got = 0;
  if (!tryStatus(api, api->ReadOpAttr(attr, ORT_OP_ATTR_INT, &v, sizeof(v), &got))) return fallback;
  return v;
}

void setDim(InferShape& s, size_t axis, int64_t value) {
  s.dims[axis] = value;
  s.symbols[axis].clear();
}

// ---- op definitions --------------------------------------------------------------------------

enum OpKind { kQKV_GEMM = 0, kSOFTMAX_CONTEXT = 1, kINT8_MATMUL = 2 };

struct OpDef : OrtCustomOp {
  OpKind kind;
  ElemType T;
  bool int8Weight;  // QKVGemm only: the variant whose weight is int8 (quantized=1)
};

OpDef const& def(OrtCustomOp const* op) { return *static_cast<OpDef const*>(op); }

char const* opName(OpKind k) {
  switch (k) {
    case kQKV_GEMM: return "QKVGemm";
    case kSOFTMAX_CONTEXT: return "SoftmaxContext";
    case kINT8_MATMUL: return "Int8MatMul";
  }
  return "?";
}

// Output shapes from input shapes and attributes. Lenient by design: what it cannot determine stays
// unknown, and the kernel checks every shape when the node runs (with the node's name, which the
// shape-inference context does not give).
void inferShapes(OrtApi const* api, OpKind opKind, OrtShapeInferContext* ctx) {
  InferShape x;
  if (!inferInput(api, ctx, 0, &x)) return;
  if (opKind == kQKV_GEMM) {
    InferShape w;
    if (x.dims.size() != 3 || !inferInput(api, ctx, 1, &w) || w.dims.size() != 2) return;
    InferShape qkv = x;
    bool const quantized = inferIntAttr(api, ctx, "quantized", 0) != 0;
    qkv.dims[2] = quantized ? w.dims[0] : w.dims[1];
    qkv.symbols[2] = quantized ? w.symbols[0] : w.symbols[1];
    inferOutput(api, ctx, 0, qkv);
    if (inferIntAttr(api, ctx, "emit_normed", 0) == 1) inferOutput(api, ctx, 1, x);
  } else if (opKind == kSOFTMAX_CONTEXT) {
    int64_t const H = inferIntAttr(api, ctx, "num_heads", -1), D = inferIntAttr(api, ctx, "head_size", -1);
    if (x.dims.size() == 3 && H > 0 && D > 0) {
      InferShape c = x;
      setDim(c, 2, H * D);
      inferOutput(api, ctx, 0, c);
    }
    for (size_t i = 1; i <= 2; ++i) {
      InferShape past;
      if (inferInput(api, ctx, i, &past)) inferOutput(api, ctx, i, past);
    }
  } else {
    InferShape w;
    if (!inferInput(api, ctx, 1, &w) || w.dims.size() != 2) return;
    InferShape y = x;
    y.dims.back() = w.dims[0];
    y.symbols.back() = w.symbols[0];
    inferOutput(api, ctx, 0, y);
  }
}

size_t inputCount(OpKind k) { return k == kQKV_GEMM ? 6 : k == kSOFTMAX_CONTEXT ? 5 : 4; }
size_t outputCount(OpKind k) { return k == kQKV_GEMM ? 2 : k == kSOFTMAX_CONTEXT ? 3 : 1; }

ONNXTensorElementDataType inputType(OpDef const& d, size_t i) {
  switch (d.kind) {
    case kQKV_GEMM:
      if (i == ops::kQKV_WEIGHT && d.int8Weight) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
      if (i == ops::kQKV_SCALE) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      return toOnnx(d.T);
    case kSOFTMAX_CONTEXT:
      return i >= ops::kSC_SEQ_LENS ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : toOnnx(d.T);
    case kINT8_MATMUL:
      if (i == ops::kI8_WEIGHT) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
      if (i == ops::kI8_SCALE) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      return toOnnx(d.T);
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

bool inputOptional(OpKind k, size_t i) {
  switch (k) {
    case kQKV_GEMM: return i >= ops::kQKV_BIAS;
    case kSOFTMAX_CONTEXT: return i == ops::kSC_START_POS;
    case kINT8_MATMUL: return i == ops::kI8_BIAS;
  }
  return false;
}

// present_key (output 1) may reuse past_key (input 1), present_value (2) past_value (2).
size_t softmaxContextMayInplace(int** inputIndex, int** outputIndex) {
  *inputIndex = new int[2]{ops::kSC_PAST_KEY, ops::kSC_PAST_VALUE};
  *outputIndex = new int[2]{1, 2};
  return 2;
}
void releaseMayInplace(int* inputIndex, int* outputIndex) {
  delete[] inputIndex;
  delete[] outputIndex;
}

OrtApi const* gApi = nullptr;  // the OrtApi the library was registered with

OrtStatus* ORT_API_CALL createKernel(OrtCustomOp const* op, OrtApi const* api, OrtKernelInfo const* info,
                                     void** kernel) noexcept {
  *kernel = nullptr;
  OpDef const& d = def(op);
  std::string where = std::string("dsattn::") + opName(d.kind) + " node";
  try {
    where += " '" + nodeName(api, info) + "'";
  } catch (...) {
  }
  return guarded(api, where, [&] {
    std::unique_ptr<KernelBase> k;
    if (d.kind == kQKV_GEMM) k.reset(new QKVGemmKernel(api, info));
    if (d.kind == kSOFTMAX_CONTEXT) k.reset(new SoftmaxContextKernel(api, info));
    if (d.kind == kINT8_MATMUL) k.reset(new Int8MatMulKernel(api, info));
    *kernel = k.release();
  });
}

OrtStatus* ORT_API_CALL computeKernel(void* kernel, OrtKernelContext* ctx) noexcept {
  KernelBase* k = static_cast<KernelBase*>(kernel);
  return guarded(k->api(), k->where(), [&] { k->compute(ctx); });
}

void ORT_API_CALL destroyKernel(void* kernel) noexcept { delete static_cast<KernelBase*>(kernel); }

OrtStatus* ORT_API_CALL inferOutputShapes(OrtCustomOp const* op, OrtShapeInferContext* ctx) noexcept {
  OpDef const& d = def(op);
  return guarded(gApi, std::string("dsattn::") + opName(d.kind) + " shape inference",
                 [&] { inferShapes(gApi, d.kind, ctx); });
}

OpDef makeDef(OpKind kind, ElemType T, bool int8Weight) {
  OpDef d{};
  // The OrtCustomOp layout of the header this is compiled against (see the file comment).
  d.version = ORT_API_VERSION;
  d.kind = kind;
  d.T = T;
  d.int8Weight = int8Weight;
  d.CreateKernel = nullptr;  // CreateKernelV2 / KernelComputeV2 report errors as OrtStatus
  d.KernelCompute = nullptr;
  d.GetName = [](OrtCustomOp const* op) noexcept { return opName(def(op).kind); };
  d.GetExecutionProviderType = [](OrtCustomOp const*) noexcept { return kPROVIDER; };
  d.GetInputType = [](OrtCustomOp const* op, size_t i) noexcept { return inputType(def(op), i); };
  d.GetInputTypeCount = [](OrtCustomOp const* op) noexcept { return inputCount(def(op).kind); };
  d.GetOutputType = [](OrtCustomOp const* op, size_t) noexcept { return toOnnx(def(op).T); };
  d.GetOutputTypeCount = [](OrtCustomOp const* op) noexcept { return outputCount(def(op).kind); };
  d.KernelDestroy = destroyKernel;
  d.GetInputCharacteristic = [](OrtCustomOp const* op, size_t i) noexcept {
    return inputOptional(def(op).kind, i) ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  };
  d.GetOutputCharacteristic = [](OrtCustomOp const* op, size_t i) noexcept {
    // QKVGemm's `normed` exists only with emit_normed=1.
    return def(op).kind == kQKV_GEMM && i == 1 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  };
  // Every input in device memory, seq_lens / start_pos included: the kernels read them there.
  d.GetInputMemoryType = [](OrtCustomOp const*, size_t) noexcept { return OrtMemTypeDefault; };
  d.GetVariadicInputMinArity = [](OrtCustomOp const*) noexcept { return 1; };
  d.GetVariadicInputHomogeneity = [](OrtCustomOp const*) noexcept { return 1; };
  d.GetVariadicOutputMinArity = [](OrtCustomOp const*) noexcept { return 1; };
  d.GetVariadicOutputHomogeneity = [](OrtCustomOp const*) noexcept { return 1; };
  d.CreateKernelV2 = createKernel;
  d.KernelComputeV2 = computeKernel;
  d.InferOutputShapeFn = inferOutputShapes;
  d.GetStartVersion = [](OrtCustomOp const*) noexcept { return kOP_VERSION; };
  d.GetEndVersion = [](OrtCustomOp const*) noexcept { return kOP_VERSION; };
  d.GetMayInplace = kind == kSOFTMAX_CONTEXT ? softmaxContextMayInplace : nullptr;
  d.ReleaseMayInplace = kind == kSOFTMAX_CONTEXT ? releaseMayInplace : nullptr;
  d.GetAliasMap = nullptr;
  d.ReleaseAliasMap = nullptr;
  return d;
}

// Static storage: ONNX Runtime keeps pointers to the OrtCustomOps for as long as any session lives.
std::vector<OpDef> const& opDefs() {
  static std::vector<OpDef> const kDEFS = [] {
    std::vector<OpDef> v;
    for (ElemType T : {ElemType::kFLOAT32, ElemType::kFLOAT16, ElemType::kBFLOAT16}) {
      v.push_back(makeDef(kQKV_GEMM, T, false));
      v.push_back(makeDef(kQKV_GEMM, T, true));
      v.push_back(makeDef(kSOFTMAX_CONTEXT, T, false));
      v.push_back(makeDef(kINT8_MATMUL, T, false));
    }
    return v;
  }();
  return kDEFS;
}

}  // namespace

OrtStatus* registerCustomOps(OrtSessionOptions* options, OrtApiBase const* base) {
  if (base == nullptr) return nullptr;  // nothing to report the error through
  OrtApi const* api = base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // Version 1 exists in every release: enough to say why.
    OrtApi const* v1 = base->GetApi(1);
    std::string const msg = std::string("libdsattn_ort.so needs ONNX Runtime C API version ") +
                            std::to_string(ORT_API_VERSION) + " or later; this ONNX Runtime is " +
                            base->GetVersionString();
    return v1 ? v1->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  gApi = api;
  return guarded(api, "dsattn custom-op registration", [&] {
    OrtCustomOpDomain* domain = nullptr;
    check(api, api->CreateCustomOpDomain(kDOMAIN, &domain), "CreateCustomOpDomain");
    // The domain must outlive every session created with these options; ONNX Runtime does not take
    // ownership, and releasing it at library unload could run after ONNX Runtime is gone. So it is
    // kept for the life of the process (one small object per registration).
    static std::mutex gDomainsMutex;
    static std::vector<OrtCustomOpDomain*>* gDomains = new std::vector<OrtCustomOpDomain*>();
    {
      std::lock_guard<std::mutex> lock(gDomainsMutex);
      gDomains->push_back(domain);
    }
    for (OpDef const& d : opDefs()) check(api, api->CustomOpDomain_Add(domain, &d), "CustomOpDomain_Add");
    check(api, api->AddCustomOpDomain(options, domain), "AddCustomOpDomain");
  });
}

}  // namespace ort
}  // namespace dsattn

// The library's only exported symbol (dsattn_ort.map): what SessionOptions.register_custom_ops_library
// and OrtApi::RegisterCustomOpsLibrary look up.
extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                           OrtApiBase const* api) {
  return dsattn::ort::registerCustomOps(options, api);
}
