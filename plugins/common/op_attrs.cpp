#include "op_attrs.h"

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <sstream>

#include "int8_matmul.h"
#include "softmax_context.h"

namespace dsattn {
namespace ops {

namespace {

constexpr int32_t kMAX_HEADS = 1 << 16;

#define DSATTN_ATTR_CHECK(cond, msg)          \
  do {                                        \
    if (!(cond)) {                            \
      std::ostringstream dsattn_attr_os_;     \
      dsattn_attr_os_ << msg;                 \
      throw AttrError(dsattn_attr_os_.str()); \
    }                                         \
  } while (0)

}  // namespace

char const* attrKindName(AttrKind kind) {
  switch (kind) {
    case AttrKind::kINT: return "INT";
    case AttrKind::kFLOAT: return "FLOAT";
    case AttrKind::kFLOATS: return "FLOATS";
  }
  return "?";
}

std::vector<AttrSpec> const& qkvGemmAttrTable() {
  static std::vector<AttrSpec> const kTABLE = {
      // name, kind, required, hasDefault, default, lo, hi, maxCount
      {"norm_type", AttrKind::kINT, false, true, 1, 0, 2, 1},
      {"epsilon", AttrKind::kFLOAT, false, true, 1e-5, 0.0, FLT_MAX, 1},
      {"quantized", AttrKind::kINT, false, true, 0, 0, 1, 1},
      {"group_size", AttrKind::kINT, false, true, 0, 0, INT32_MAX, 1},
      {"emit_normed", AttrKind::kINT, false, true, 0, 0, 1, 1},
  };
  return kTABLE;
}

std::vector<AttrSpec> const& softmaxContextAttrTable() {
  static std::vector<AttrSpec> const kTABLE = {
      {"num_heads", AttrKind::kINT, true, false, 0, 1, kMAX_HEADS, 1},
      {"num_kv_heads", AttrKind::kINT, false, false, 0, 1, kMAX_HEADS, 1},  // default: num_heads
      {"head_size", AttrKind::kINT, true, false, 0, 1, 1 << 16, 1},
      {"scale", AttrKind::kFLOAT, false, false, 0, -FLT_MAX, FLT_MAX, 1},  // default: 1/sqrt(head_size)
      {"qkv_layout", AttrKind::kINT, false, true, 0, 0, 1, 1},
      {"causal", AttrKind::kINT, false, true, 1, 0, 1, 1},
      {"local_window", AttrKind::kINT, false, true, 0, 0, INT32_MAX, 1},
      {"rotary_dim", AttrKind::kINT, false, true, 0, 0, 1 << 16, 1},
      {"rotary_style", AttrKind::kINT, false, true, 0, 0, 1, 1},
      {"rope_theta", AttrKind::kFLOAT, false, true, 10000.0, 0.0, FLT_MAX, 1},
      {"alibi_slopes", AttrKind::kFLOATS, false, true, 0, 0, 0, kMAX_HEADS},
  };
  return kTABLE;
}

std::vector<AttrSpec> const& int8MatMulAttrTable() {
  static std::vector<AttrSpec> const kTABLE = {
      {"group_size", AttrKind::kINT, false, true, 0, 0, INT32_MAX, 1},
  };
  return kTABLE;
}

AttrSpec const* findAttr(std::vector<AttrSpec> const& table, char const* name) {
  for (AttrSpec const& s : table) {
    if (std::strcmp(s.name, name) == 0) return &s;
  }
  return nullptr;
}

std::string attrNames(std::vector<AttrSpec> const& table) {
  std::ostringstream os;
  for (size_t i = 0; i < table.size(); ++i) os << (i ? ", " : "") << table[i].name;
  return os.str();
}

int32_t checkInt(AttrSpec const& spec, int64_t value) {
  DSATTN_ATTR_CHECK(static_cast<double>(value) >= spec.lo && static_cast<double>(value) <= spec.hi,
                    "attribute " << spec.name << "=" << value << " is out of range [" << static_cast<int64_t>(spec.lo)
                                 << ", " << static_cast<int64_t>(spec.hi) << "]");
  return static_cast<int32_t>(value);
}

float checkFloat(AttrSpec const& spec, float value) {
  DSATTN_ATTR_CHECK(std::isfinite(value) && value >= spec.lo && value <= spec.hi,
                    "attribute " << spec.name << "=" << value << " is out of range [" << spec.lo << ", " << spec.hi
                                 << "]");
  return value;
}

void checkFloats(AttrSpec const& spec, std::vector<float> const& values) {
  DSATTN_ATTR_CHECK(values.size() <= static_cast<size_t>(spec.maxCount),
                    "attribute " << spec.name << " has " << values.size() << " values (expected 0.." << spec.maxCount
                                 << ")");
  for (size_t j = 0; j < values.size(); ++j) {
    DSATTN_ATTR_CHECK(std::isfinite(values[j]), "attribute " << spec.name << "[" << j << "]=" << values[j]
                                                             << " is not finite");
  }
}

void checkPluginString(std::string const& name, std::string const& value) {
  char const* expected = name == "plugin_version" ? kOP_VERSION : kOP_NAMESPACE;
  DSATTN_ATTR_CHECK(value == expected, "attribute " << name << "='" << value << "' but this library implements '"
                                                    << expected << "'");
}

void checkQKVGemm(QKVGemmAttrs const& a) {
  DSATTN_ATTR_CHECK(a.quantized == 1 || a.group_size == 0,
                    "group_size=" << a.group_size << " is only meaningful with quantized=1");
  DSATTN_ATTR_CHECK(a.group_size == 0 || a.group_size % DSATTN_INT8_GROUP_MULTIPLE == 0,
                    "group_size=" << a.group_size << " is not supported by the kernels: it must be 0 or a multiple of "
                                  << DSATTN_INT8_GROUP_MULTIPLE);
}

void resolveSoftmaxContext(SoftmaxContextAttrs& a, bool hasNumKvHeads, bool hasScale) {
  if (!hasNumKvHeads) a.num_kv_heads = a.num_heads;
  if (!hasScale && a.head_size > 0) a.scale = static_cast<float>(1.0 / std::sqrt(double(a.head_size)));
  int32_t const H = a.num_heads, Hkv = a.num_kv_heads, D = a.head_size;
  DSATTN_ATTR_CHECK(H >= 1 && Hkv >= 1 && D >= 1,
                    "num_heads=" << H << ", num_kv_heads=" << Hkv << ", head_size=" << D << " must all be >= 1");
  DSATTN_ATTR_CHECK(H % Hkv == 0, "num_kv_heads=" << Hkv << " must divide num_heads=" << H);
  DSATTN_ATTR_CHECK(a.qkv_layout == 0 || Hkv == H, "qkv_layout=1 requires num_kv_heads == num_heads, got num_kv_heads="
                                                       << Hkv << ", num_heads=" << H);
  DSATTN_ATTR_CHECK(a.rotary_dim % 2 == 0 && a.rotary_dim <= D,
                    "rotary_dim=" << a.rotary_dim << " must be even and in [0, head_size=" << D << "]");
  DSATTN_ATTR_CHECK(a.rotary_dim == 0 || a.rope_theta > 0.f,
                    "rope_theta=" << a.rope_theta << " must be > 0 when rotary_dim > 0");
  DSATTN_ATTR_CHECK(a.alibi_slopes.empty() || static_cast<int32_t>(a.alibi_slopes.size()) == H,
                    "alibi_slopes must be empty or hold num_heads=" << H << " values, got " << a.alibi_slopes.size());
  // Kernel restrictions beyond OPS.md, reported when the node is created rather than when it runs.
  DSATTN_ATTR_CHECK(D % DSATTN_ATTN_HEAD_MULTIPLE == 0 && D <= DSATTN_ATTN_MAX_HEAD_SIZE,
                    "head_size=" << D << " is not supported by the kernels: it must be a multiple of "
                                 << DSATTN_ATTN_HEAD_MULTIPLE << " and at most " << DSATTN_ATTN_MAX_HEAD_SIZE);
}

void checkInt8MatMul(Int8MatMulAttrs const& a) {
  // Kernel restriction beyond OPS.md ("any divisor of K").
  DSATTN_ATTR_CHECK(a.group_size == 0 || a.group_size % DSATTN_INT8_GROUP_MULTIPLE == 0,
                    "group_size=" << a.group_size << " is not supported by the kernels: it must be 0 or a multiple of "
                                  << DSATTN_INT8_GROUP_MULTIPLE);
}

}  // namespace ops
}  // namespace dsattn
