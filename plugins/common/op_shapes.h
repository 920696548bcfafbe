// Shape and type rules of the three dsattn ops (OPS.md) on fully known tensors, independent of any
// runtime: which inputs the attributes require or forbid, ranks, the dims that must agree, element
// types, and the output shapes. A runtime that sees concrete shapes when a node runs (ONNX Runtime's
// custom-op kernels) checks them here and gets messages naming the tensor, its shape and the
// attribute involved; the kernels' own validation stays the last line.
//
// C++17 and the kernels' headers only: no TensorRT, no ONNX Runtime.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "dsattn_common.h"
#include "op_attrs.h"

namespace dsattn {
namespace ops {

enum class ElemType { kFLOAT32, kFLOAT16, kBFLOAT16, kINT8, kINT32, kOTHER };

char const* elemTypeName(ElemType t);
bool isFloatT(ElemType t);                // float32, float16 or bfloat16
dsattn_dtype kernelDtype(ElemType t);     // T -> the kernels' dtype; throws ShapeError otherwise
size_t elemSize(ElemType t);              // bytes per element (float T, int8, int32)

class ShapeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct TensorInfo {
  bool present = false;  // false: an absent optional input (empty name, or beyond the node's inputs)
  ElemType type = ElemType::kOTHER;
  std::vector<int64_t> dims;
};

std::string dimsString(std::vector<int64_t> const& dims);
int64_t numElements(std::vector<int64_t> const& dims);

// Input positions (OPS.md).
enum QKVGemmInput { kQKV_INPUT = 0, kQKV_WEIGHT, kQKV_BIAS, kQKV_GAMMA, kQKV_BETA, kQKV_SCALE, kQKV_NUM_INPUTS };
enum SoftmaxContextInput { kSC_QKV = 0, kSC_PAST_KEY, kSC_PAST_VALUE, kSC_SEQ_LENS, kSC_START_POS, kSC_NUM_INPUTS };
enum Int8MatMulInput { kI8_INPUT = 0, kI8_WEIGHT, kI8_SCALE, kI8_BIAS, kI8_NUM_INPUTS };

struct QKVGemmShape {
  int64_t B, S, K, N;  // M = B * S rows
  ElemType T;
};
struct SoftmaxContextShape {
  int64_t B, S, Tmax;
  ElemType T;
};
struct Int8MatMulShape {
  int64_t M, K, N;
  std::vector<int64_t> outDims;  // input's leading dims + [N]
  ElemType T;
};

// Check the node's inputs (`in` indexed by input position, size = the op's input count) against the
// attributes; throw ShapeError naming the tensor, its shape / type and the rule.
QKVGemmShape checkQKVGemmInputs(QKVGemmAttrs const& a, std::vector<TensorInfo> const& in);
SoftmaxContextShape checkSoftmaxContextInputs(SoftmaxContextAttrs const& a, std::vector<TensorInfo> const& in);
Int8MatMulShape checkInt8MatMulInputs(Int8MatMulAttrs const& a, std::vector<TensorInfo> const& in);

}  // namespace ops
}  // namespace dsattn
