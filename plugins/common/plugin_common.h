// Shared machinery of the dsattn TensorRT plugins: logging through the ILoggerFinder that TensorRT
// hands to setLoggerFinder, one throwing check macro, the attribute table (one table per op drives
// getFieldNames, createPlugin parsing and getFieldsToSerialize), dtype mapping, and a plugin base
// class whose noexcept TensorRT entry points wrap throwing implementations (try/catch -> log ->
// failure value).
#pragma once

#include <NvInferRuntime.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "dsattn_common.h"
#include "op_attrs.h"

namespace dsattn {
namespace plugin {

using nvinfer1::DataType;
using nvinfer1::ILogger;
using Severity = nvinfer1::ILogger::Severity;

constexpr char const* kPLUGIN_VERSION = "1";
constexpr char const* kPLUGIN_NAMESPACE = "dsattn";

// ---- logging ---------------------------------------------------------------------------------

// Sends msg to the logger TensorRT registered through setLoggerFinder. Without one (a process
// that dlopens the library without calling setLoggerFinder), errors and warnings go to stderr so
// that they are never lost; info/verbose are dropped.
void log(Severity severity, std::string const& msg) noexcept;
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

// ---- checks ----------------------------------------------------------------------------------

class PluginError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// DSATTN_CHECK(cond, "stream" << of << values): throws PluginError naming the file, line and the
// values; the noexcept entry points catch it, log it and return their failure value.
#define DSATTN_CHECK(cond, msg)                                                      \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::ostringstream dsattn_check_os_;                                           \
      dsattn_check_os_ << msg;                                                       \
      throw ::dsattn::plugin::PluginError(dsattn_check_os_.str());                   \
    }                                                                                \
  } while (0)

#define DSATTN_CUDA_CHECK(expr)                                                      \
  do {                                                                               \
    cudaError_t dsattn_cuda_err_ = (expr);                                           \
    DSATTN_CHECK(dsattn_cuda_err_ == cudaSuccess,                                    \
                 #expr << " failed: " << cudaGetErrorName(dsattn_cuda_err_) << " (" \
                       << cudaGetErrorString(dsattn_cuda_err_) << ")");             \
  } while (0)

// ---- dtypes ----------------------------------------------------------------------------------

char const* dataTypeName(DataType t) noexcept;
// T of OPS.md (float32, float16, bfloat16) -> kernel dtype; throws for anything else.
dsattn_dtype toKernelDtype(DataType t);
bool isFloatT(DataType t) noexcept;  // fp32, fp16 or bf16
size_t dataTypeSize(DataType t);

std::string dimsToString(nvinfer1::Dims const& d);
int64_t volume(nvinfer1::Dims const& d);

// Build-time dims may be -1 (resolved at runtime). expectDim/expectRank throw only for known
// mismatches; `what` names the tensor in the message.
inline bool known(int64_t v) { return v >= 0; }
void expectRank(nvinfer1::Dims const& d, int32_t rank, char const* what, char const* layout);
void expectDim(nvinfer1::Dims const& d, int32_t axis, int64_t want, char const* what, char const* wantName);

// The kernels' *_workspace_size functions depend on sizes only but return 0 for params their
// launch would reject, which includes NULL data pointers. getWorkspaceSize has no tensors yet, so it
// passes aligned, never-dereferenced placeholders, a distinct one per slot (the kernels reject
// aliased outputs).
void* workspaceQueryPointer(int slot);

// Throws when `stream` is being captured into a CUDA graph: one-time allocations (cuBLASLt context,
// ALiBi slopes upload) must happen in attachToContext, outside capture.
void checkNotCapturing(cudaStream_t stream, char const* what);

// ---- attribute table -------------------------------------------------------------------------

// The tables and their kinds are runtime-neutral (op_attrs.h, shared with the ONNX Runtime custom
// ops); TensorRT's ONNX parser passes INT as kINT32 length 1, FLOAT as kFLOAT32 length 1, FLOATS as
// kFLOAT32 length n.
using ops::AttrKind;
using ops::AttrSpec;

// Parsed attribute values of one node; indexed like the op's table.
class AttrValues {
 public:
  AttrValues() = default;
  explicit AttrValues(std::vector<AttrSpec> const* table);

  bool isSet(char const* name) const;
  int32_t getInt(char const* name) const;
  float getFloat(char const* name) const;
  std::vector<float> const& getFloats(char const* name) const;
  void setInt(char const* name, int32_t v);
  void setFloat(char const* name, float v);
  void setFloats(char const* name, std::vector<float> v);

  // Parses a TensorRT field collection: every field checked (name, type, count, data pointer,
  // range); unknown fields, duplicates and missing required fields throw. `plugin_version` and
  // `plugin_namespace` (kCHAR) are accepted when their value names this library's
  // version/namespace: TensorRT's ONNX parser never sends them (it passes only the fields
  // getFieldNames() lists, and uses these two attributes to find the creator), but a caller
  // building the field collection from all of a node's attributes may.
  static AttrValues parse(std::vector<AttrSpec> const& table, nvinfer1::PluginFieldCollection const* fc,
                          char const* opName);

  // Field collection describing every attribute (resolved values included), pointing into this
  // object: valid until the object changes or dies.
  nvinfer1::PluginFieldCollection const* toFields();

  // "name=value, ..." for messages.
  std::string toString() const;

 private:
  struct Value {
    bool set = false;
    int32_t i = 0;
    float f = 0.f;
    std::vector<float> fs;
  };
  size_t index(char const* name) const;
  std::vector<AttrSpec> const* mTable = nullptr;
  std::vector<Value> mValues;
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mFC{};
};

// getFieldNames() of a creator: one PluginField per table row (data nullptr).
std::vector<nvinfer1::PluginField> fieldNamesFromTable(std::vector<AttrSpec> const& table);

// ---- plugin base -----------------------------------------------------------------------------

// Tensor presence: an optional input is absent when it lies beyond nbInputs (the exporter leaves
// trailing absent inputs out of the node; TensorRT's ONNX parser trims nothing) or when its tensor
// is empty (nbDims <= 0, or a [0] shape): the exporter writes an absent input that precedes a
// present one as a shape-[0] initializer, because the parser would turn an empty input name into a
// null plugin input, whose handling by TensorRT is not defined (docs/OPS.md).
bool isAbsent(int32_t index, int32_t nbInputs, nvinfer1::Dims const* dimsOrNull);
bool isAbsentExpr(int32_t index, int32_t nbInputs, nvinfer1::DimsExprs const* inputs);

// The dims and types of enqueue's tensor descriptors, as the arrays the plugins' params() builders
// and shape checks take.
struct TensorDescs {
  std::vector<nvinfer1::Dims> dims;
  std::vector<nvinfer1::DataType> types;
  TensorDescs(nvinfer1::PluginTensorDesc const* desc, int32_t n) : dims(n), types(n) {
    for (int32_t i = 0; i < n; ++i) {
      dims[i] = desc[i].dims;
      types[i] = desc[i].type;
    }
  }
};

class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuildV2,
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  PluginBase(char const* opName, AttrValues attrs) : mOpName(opName), mAttrs(std::move(attrs)) {}
  ~PluginBase() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return mOpName; }
  char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
  char const* getPluginNamespace() const noexcept override { return kPLUGIN_NAMESPACE; }

  // IPluginV3OneBuild(V2)
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
  int32_t getAliasedInput(int32_t outputIndex) noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 protected:
  // Throwing implementations (the base catches, logs "<op> <method>: <what>" and fails).
  virtual PluginBase* cloneImpl() const = 0;
  virtual int32_t nbOutputsImpl() const = 0;
  virtual void outputTypesImpl(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                               int32_t nbInputs) const = 0;
  virtual void outputShapesImpl(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs* outputs,
                                int32_t nbOutputs, nvinfer1::IExprBuilder& eb) const = 0;
  virtual bool supportsImpl(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                            int32_t nbOutputs) const = 0;
  // Checks ranks / static dims against the attributes (build time: -1 dims are unknown).
  virtual void checkShapesImpl(nvinfer1::Dims const* in, DataType const* inTypes, int32_t nbInputs,
                               nvinfer1::Dims const* out, int32_t nbOutputs) const = 0;
  virtual size_t workspaceImpl(nvinfer1::Dims const* inMax, DataType const* inTypes, int32_t nbInputs) const = 0;
  virtual void enqueueImpl(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                           int32_t nbInputs, void const* const* inputs, void* const* outputs, void* workspace,
                           cudaStream_t stream) = 0;
  virtual int32_t aliasedInputImpl(int32_t) const { return -1; }
  // Called by attachToContext on the clone (per-context resources such as the cuBLASLt context).
  virtual void attachImpl() {}

  void reportError(char const* method, char const* what) const noexcept;

  char const* mOpName;
  AttrValues mAttrs;
  // Number of inputs seen in configurePlugin/onShapeChange (enqueue receives no count).
  int32_t mNbInputs = -1;
};

// ---- creator ---------------------------------------------------------------------------------

using PluginFactory = PluginBase* (*)(AttrValues attrs);  // throws on inconsistent attributes

class Creator : public nvinfer1::IPluginCreatorV3One {
 public:
  Creator(char const* opName, std::vector<AttrSpec> const* table, PluginFactory factory);
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFC; }
  char const* getPluginName() const noexcept override { return mOpName; }
  char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
  char const* getPluginNamespace() const noexcept override { return kPLUGIN_NAMESPACE; }

 private:
  char const* mOpName;
  std::vector<AttrSpec> const* mTable;
  PluginFactory mFactory;
  std::vector<nvinfer1::PluginField> mFieldNames;
  nvinfer1::PluginFieldCollection mFC{};
};

// Per-op creators (defined in plugins/<op>/).
nvinfer1::IPluginCreatorInterface* qkvGemmCreator();
nvinfer1::IPluginCreatorInterface* softmaxContextCreator();
nvinfer1::IPluginCreatorInterface* int8MatMulCreator();

}  // namespace plugin
}  // namespace dsattn
