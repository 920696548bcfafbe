#include "op_shapes.h"

#include <sstream>

#include "int8_matmul.h"

namespace dsattn {
namespace ops {

namespace {

#define DSATTN_SHAPE_CHECK(cond, msg)          \
  do {                                         \
    if (!(cond)) {                             \
      std::ostringstream dsattn_shape_os_;     \
      dsattn_shape_os_ << msg;                 \
      throw ShapeError(dsattn_shape_os_.str()); \
    }                                          \
  } while (0)

char const* const kQKV_NAMES[kQKV_NUM_INPUTS] = {"input", "weight", "bias", "gamma", "beta", "weight_scale"};

void expectRank(TensorInfo const& t, size_t rank, char const* what, char const* layout) {
  DSATTN_SHAPE_CHECK(t.dims.size() == rank,
                     what << " must have rank " << rank << " " << layout << ", got shape " << dimsString(t.dims));
}

void expectDim(TensorInfo const& t, size_t axis, int64_t want, char const* what, char const* wantName) {
  DSATTN_SHAPE_CHECK(t.dims[axis] == want, what << " dim " << axis << " must be " << wantName << "=" << want
                                                << ", got shape " << dimsString(t.dims));
}

void expectType(TensorInfo const& t, ElemType want, char const* what) {
  DSATTN_SHAPE_CHECK(t.type == want, what << " must be " << elemTypeName(want) << ", got " << elemTypeName(t.type));
}

TensorInfo const& at(std::vector<TensorInfo> const& in, size_t i) {
  static TensorInfo const kABSENT;
  return i < in.size() ? in[i] : kABSENT;
}

}  // namespace

char const* elemTypeName(ElemType t) {
  switch (t) {
    case ElemType::kFLOAT32: return "float32";
    case ElemType::kFLOAT16: return "float16";
    case ElemType::kBFLOAT16: return "bfloat16";
    case ElemType::kINT8: return "int8";
    case ElemType::kINT32: return "int32";
    case ElemType::kOTHER: break;
  }
  return "an unsupported type";
}

bool isFloatT(ElemType t) { return t == ElemType::kFLOAT32 || t == ElemType::kFLOAT16 || t == ElemType::kBFLOAT16; }

dsattn_dtype kernelDtype(ElemType t) {
  switch (t) {
    case ElemType::kFLOAT32: return DSATTN_FLOAT32;
    case ElemType::kFLOAT16: return DSATTN_FLOAT16;
    case ElemType::kBFLOAT16: return DSATTN_BFLOAT16;
    default: break;
  }
  DSATTN_SHAPE_CHECK(false, "tensor type " << elemTypeName(t) << " is not a T type (float32, float16, bfloat16)");
  return DSATTN_FLOAT32;
}

size_t elemSize(ElemType t) {
  switch (t) {
    case ElemType::kFLOAT32: return 4;
    case ElemType::kFLOAT16: return 2;
    case ElemType::kBFLOAT16: return 2;
    case ElemType::kINT8: return 1;
    case ElemType::kINT32: return 4;
    case ElemType::kOTHER: break;
  }
  DSATTN_SHAPE_CHECK(false, "no element size for " << elemTypeName(t));
  return 0;
}

std::string dimsString(std::vector<int64_t> const& dims) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < dims.size(); ++i) os << (i ? ", " : "") << dims[i];
  os << "]";
  return os.str();
}

int64_t numElements(std::vector<int64_t> const& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

QKVGemmShape checkQKVGemmInputs(QKVGemmAttrs const& a, std::vector<TensorInfo> const& in) {
  // Which inputs the attributes require / forbid (dsattn.export.ops rejects the same).
  for (int i = 0; i < kQKV_NUM_INPUTS; ++i) {
    bool const required = i == kQKV_INPUT || i == kQKV_WEIGHT || (i == kQKV_GAMMA && a.norm_type != 0) ||
                          (i == kQKV_BETA && a.norm_type == 1) || (i == kQKV_SCALE && a.quantized == 1);
    bool const forbidden = (i == kQKV_GAMMA && a.norm_type == 0) || (i == kQKV_BETA && a.norm_type != 1) ||
                           (i == kQKV_SCALE && a.quantized == 0);
    bool const present = at(in, i).present;
    DSATTN_SHAPE_CHECK(!(required && !present), "input " << i << " '" << kQKV_NAMES[i] << "' is required with norm_type="
                                                         << a.norm_type << ", quantized=" << a.quantized << " but absent");
    DSATTN_SHAPE_CHECK(!(forbidden && present), "input " << i << " '" << kQKV_NAMES[i]
                                                         << "' must be absent with norm_type=" << a.norm_type
                                                         << ", quantized=" << a.quantized);
  }
  TensorInfo const& x = in[kQKV_INPUT];
  TensorInfo const& w = in[kQKV_WEIGHT];
  expectRank(x, 3, "input", "[B, S, hidden]");
  DSATTN_SHAPE_CHECK(isFloatT(x.type), "input must be float32, float16 or bfloat16, got " << elemTypeName(x.type));
  QKVGemmShape s{x.dims[0], x.dims[1], x.dims[2], 0, x.type};
  if (a.quantized) {
    expectRank(w, 2, "int8 weight", "[N, hidden]");
    expectType(w, ElemType::kINT8, "weight (quantized=1)");
    expectDim(w, 1, s.K, "int8 weight", "hidden");
    s.N = w.dims[0];
    DSATTN_SHAPE_CHECK(s.K % DSATTN_INT8_K_MULTIPLE == 0, "hidden=" << s.K << " is not supported by the int8 kernels: "
                                                                    << "it must be a multiple of " << DSATTN_INT8_K_MULTIPLE);
    DSATTN_SHAPE_CHECK(a.group_size == 0 || s.K % a.group_size == 0,
                       "group_size=" << a.group_size << " does not divide hidden=" << s.K);
    TensorInfo const& sc = in[kQKV_SCALE];
    expectRank(sc, 2, "weight_scale", "[N, hidden / group_size]");
    expectType(sc, ElemType::kFLOAT32, "weight_scale");
    expectDim(sc, 0, s.N, "weight_scale", "N");
    expectDim(sc, 1, a.group_size == 0 ? 1 : s.K / a.group_size, "weight_scale", "hidden / group_size");
  } else {
    expectRank(w, 2, "weight", "[hidden, N]");
    expectType(w, x.type, "weight (quantized=0, the input's type)");
    expectDim(w, 0, s.K, "weight", "hidden");
    s.N = w.dims[1];
  }
  if (at(in, kQKV_BIAS).present) {
    expectRank(in[kQKV_BIAS], 1, "bias", "[N]");
    expectType(in[kQKV_BIAS], x.type, "bias (the input's type)");
    expectDim(in[kQKV_BIAS], 0, s.N, "bias", "N");
  }
  for (int i : {int(kQKV_GAMMA), int(kQKV_BETA)}) {
    if (!at(in, i).present) continue;
    expectRank(in[i], 1, kQKV_NAMES[i], "[hidden]");
    expectType(in[i], x.type, kQKV_NAMES[i]);
    expectDim(in[i], 0, s.K, kQKV_NAMES[i], "hidden");
  }
  return s;
}

SoftmaxContextShape checkSoftmaxContextInputs(SoftmaxContextAttrs const& a, std::vector<TensorInfo> const& in) {
  for (int i = 0; i < kSC_START_POS; ++i) {
    DSATTN_SHAPE_CHECK(at(in, i).present, "input " << i << " is required (qkv, past_key, past_value, seq_lens)");
  }
  TensorInfo const& qkv = in[kSC_QKV];
  int64_t const width = (int64_t(a.num_heads) + 2 * int64_t(a.num_kv_heads)) * a.head_size;
  expectRank(qkv, 3, "qkv", "[B, S, (H + 2*Hkv)*D]");
  DSATTN_SHAPE_CHECK(isFloatT(qkv.type), "qkv must be float32, float16 or bfloat16, got " << elemTypeName(qkv.type));
  expectDim(qkv, 2, width, "qkv", "(num_heads + 2*num_kv_heads)*head_size");
  SoftmaxContextShape s{qkv.dims[0], qkv.dims[1], 0, qkv.type};
  for (int i : {int(kSC_PAST_KEY), int(kSC_PAST_VALUE)}) {
    char const* name = i == kSC_PAST_KEY ? "past_key" : "past_value";
    expectRank(in[i], 4, name, "[B, Hkv, Tmax, D]");
    expectType(in[i], qkv.type, name);
    expectDim(in[i], 0, s.B, name, "B");
    expectDim(in[i], 1, a.num_kv_heads, name, "num_kv_heads");
    expectDim(in[i], 3, a.head_size, name, "head_size");
  }
  s.Tmax = in[kSC_PAST_KEY].dims[2];
  expectDim(in[kSC_PAST_VALUE], 2, s.Tmax, "past_value", "Tmax of past_key");
  expectRank(in[kSC_SEQ_LENS], 1, "seq_lens", "[B]");
  expectType(in[kSC_SEQ_LENS], ElemType::kINT32, "seq_lens");
  expectDim(in[kSC_SEQ_LENS], 0, s.B, "seq_lens", "B");
  if (at(in, kSC_START_POS).present) {
    expectRank(in[kSC_START_POS], 1, "start_pos", "[B]");
    expectType(in[kSC_START_POS], ElemType::kINT32, "start_pos");
    expectDim(in[kSC_START_POS], 0, s.B, "start_pos", "B");
  }
  return s;
}

Int8MatMulShape checkInt8MatMulInputs(Int8MatMulAttrs const& a, std::vector<TensorInfo> const& in) {
  for (int i = 0; i < kI8_BIAS; ++i) {
    DSATTN_SHAPE_CHECK(at(in, i).present, "input " << i << " is required (input, weight, weight_scale)");
  }
  TensorInfo const& x = in[kI8_INPUT];
  DSATTN_SHAPE_CHECK(!x.dims.empty(), "input must be [..., K], got shape " << dimsString(x.dims));
  DSATTN_SHAPE_CHECK(isFloatT(x.type), "input must be float32, float16 or bfloat16, got " << elemTypeName(x.type));
  Int8MatMulShape s;
  s.T = x.type;
  s.K = x.dims.back();
  s.M = s.K > 0 ? numElements(x.dims) / s.K : 0;
  TensorInfo const& w = in[kI8_WEIGHT];
  expectRank(w, 2, "weight", "[N, K]");
  expectType(w, ElemType::kINT8, "weight");
  expectDim(w, 1, s.K, "weight", "K");
  s.N = w.dims[0];
  DSATTN_SHAPE_CHECK(s.K % DSATTN_INT8_K_MULTIPLE == 0,
                     "K=" << s.K << " is not supported by the kernels: it must be a multiple of " << DSATTN_INT8_K_MULTIPLE);
  DSATTN_SHAPE_CHECK(a.group_size == 0 || s.K % a.group_size == 0,
                     "group_size=" << a.group_size << " does not divide K=" << s.K);
  TensorInfo const& sc = in[kI8_SCALE];
  expectRank(sc, 2, "weight_scale", "[N, K / group_size]");
  expectType(sc, ElemType::kFLOAT32, "weight_scale");
  expectDim(sc, 0, s.N, "weight_scale", "N");
  expectDim(sc, 1, a.group_size == 0 ? 1 : s.K / a.group_size, "weight_scale", "K / group_size");
  if (at(in, kI8_BIAS).present) {
    expectRank(in[kI8_BIAS], 1, "bias", "[N]");
    expectType(in[kI8_BIAS], x.type, "bias (the input's type)");
    expectDim(in[kI8_BIAS], 0, s.N, "bias", "N");
  }
  s.outDims = x.dims;
  s.outDims.back() = s.N;
  return s;
}

}  // namespace ops
}  // namespace dsattn
