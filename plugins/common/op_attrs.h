// The attribute contract of the three dsattn ops (OPS.md), independent of any runtime: one table per
// op (name, kind, required, default, range, most values) and the checks that involve several
// attributes or the kernels' own limits. The TensorRT plugins (PluginField collections) and the ONNX
// Runtime custom ops (OrtKernelInfo) both read a node's attributes through these tables and resolve
// them with these functions, so both runtimes accept and reject exactly the same nodes with the same
// messages.
//
// C++17 and the kernels' headers only: no TensorRT, no ONNX Runtime.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace dsattn {
namespace ops {

// ONNX attribute kinds the ops use (OPS.md: INT / FLOAT / FLOATS; flags are INT 0/1).
enum class AttrKind { kINT, kFLOAT, kFLOATS };

char const* attrKindName(AttrKind kind);  // "INT", "FLOAT", "FLOATS"

struct AttrSpec {
  char const* name;
  AttrKind kind;
  bool required;      // the node must carry it
  bool hasDefault;    // false: optional, resolved by the op from other attributes (e.g. scale)
  double defaultValue;
  double lo, hi;      // inclusive range of an INT/FLOAT value (FLOATS: each element finite only)
  int32_t maxCount;   // FLOATS: most elements accepted (huge counts are rejected, not allocated)
};

// A node's attributes that break the contract. The message names the attribute and its value;
// each runtime prefixes the op and node it was reading.
class AttrError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

std::vector<AttrSpec> const& qkvGemmAttrTable();
std::vector<AttrSpec> const& softmaxContextAttrTable();
std::vector<AttrSpec> const& int8MatMulAttrTable();

// The table row named `name`, or nullptr.
AttrSpec const* findAttr(std::vector<AttrSpec> const& table, char const* name);
// "norm_type, epsilon, ..." (for "unknown attribute" messages).
std::string attrNames(std::vector<AttrSpec> const& table);

// Range checks of single values against their row; throw AttrError ("attribute NAME=VALUE is out of
// range [lo, hi]" / "... is not finite" / "... has N values (expected 0..M)"). An INT value is
// checked as int64 before it is narrowed to the int32 the kernels take.
int32_t checkInt(AttrSpec const& spec, int64_t value);
float checkFloat(AttrSpec const& spec, float value);
void checkFloats(AttrSpec const& spec, std::vector<float> const& values);

// plugin_version / plugin_namespace (OPS.md: every node carries them) must name what this library
// implements; throws AttrError otherwise.
void checkPluginString(std::string const& name, std::string const& value);
constexpr char const* kOP_VERSION = "1";
constexpr char const* kOP_NAMESPACE = "dsattn";

// ---- resolved attributes and the rules between them -------------------------------------------

struct QKVGemmAttrs {
  int32_t norm_type = 1;
  float epsilon = 1e-5f;
  int32_t quantized = 0;
  int32_t group_size = 0;
  int32_t emit_normed = 0;
};

struct SoftmaxContextAttrs {
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;  // resolved to num_heads when the node omits it
  int32_t head_size = 0;
  float scale = 0.f;         // resolved to 1/sqrt(head_size) when the node omits it
  int32_t qkv_layout = 0;
  int32_t causal = 1;
  int32_t local_window = 0;
  int32_t rotary_dim = 0;
  int32_t rotary_style = 0;
  float rope_theta = 10000.f;
  std::vector<float> alibi_slopes;
};

struct Int8MatMulAttrs {
  int32_t group_size = 0;
};

// Cross-attribute rules of OPS.md and the kernels' restrictions beyond it, checked when a node is
// created (not when it first runs). Throw AttrError naming the attributes and values.
void checkQKVGemm(QKVGemmAttrs const& a);
// Fills num_kv_heads / scale when the node did not set them, then checks.
void resolveSoftmaxContext(SoftmaxContextAttrs& a, bool hasNumKvHeads, bool hasScale);
void checkInt8MatMul(Int8MatMulAttrs const& a);

}  // namespace ops
}  // namespace dsattn
