#include "plugin_common.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>

namespace dsattn {
namespace plugin {

using namespace nvinfer1;

// ---- logging ---------------------------------------------------------------------------------

namespace {
std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder = nullptr;

char const* severityName(Severity s) {
  switch (s) {
    case Severity::kINTERNAL_ERROR: return "INTERNAL_ERROR";
    case Severity::kERROR: return "ERROR";
    case Severity::kWARNING: return "WARNING";
    case Severity::kINFO: return "INFO";
    case Severity::kVERBOSE: return "VERBOSE";
  }
  return "?";
}
}  // namespace

void setLoggerFinder(ILoggerFinder* finder) noexcept {
  std::lock_guard<std::mutex> lock(gLoggerMutex);
  // TensorRT may call this once per registry that loads the library; the first finder wins (it
  // outlives the library's use, as TensorRT owns it), like TensorRT's own plugin/vc library.
  if (gLoggerFinder == nullptr && finder != nullptr) gLoggerFinder = finder;
}

void log(Severity severity, std::string const& msg) noexcept {
  try {
    ILogger* logger = nullptr;
    {
      std::lock_guard<std::mutex> lock(gLoggerMutex);
      if (gLoggerFinder != nullptr) logger = gLoggerFinder->findLogger();
    }
    std::string const text = "dsattn plugin: " + msg;
    if (logger != nullptr) {
      logger->log(severity, text.c_str());
    } else if (severity <= Severity::kWARNING) {
      std::fprintf(stderr, "[%s] %s\n", severityName(severity), text.c_str());
    }
  } catch (...) {
    // Logging must never throw out of a noexcept entry point (std::bad_alloc at worst).
  }
}

// ---- dtypes ----------------------------------------------------------------------------------

char const* dataTypeName(DataType t) noexcept {
  switch (t) {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kBOOL: return "bool";
    case DataType::kUINT8: return "uint8";
    case DataType::kFP8: return "fp8";
    case DataType::kINT4: return "int4";
    case DataType::kFP4: return "fp4";
    case DataType::kE8M0: return "e8m0";
  }
  return "unknown";
}

bool isFloatT(DataType t) noexcept {
  return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

dsattn_dtype toKernelDtype(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return DSATTN_FLOAT32;
    case DataType::kHALF: return DSATTN_FLOAT16;
    case DataType::kBF16: return DSATTN_BFLOAT16;
    default: break;
  }
  DSATTN_CHECK(false, "tensor type " << dataTypeName(t) << " is not a T type (float32, float16, bfloat16)");
  return DSATTN_FLOAT32;
}

size_t dataTypeSize(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return 4;
    case DataType::kHALF: return 2;
    case DataType::kBF16: return 2;
    case DataType::kINT8: return 1;
    case DataType::kINT32: return 4;
    case DataType::kINT64: return 8;
    default: break;
  }
  DSATTN_CHECK(false, "no element size for type " << dataTypeName(t));
  return 0;
}

std::string dimsToString(Dims const& d) {
  std::ostringstream os;
  os << "[";
  for (int32_t i = 0; i < d.nbDims; ++i) os << (i ? ", " : "") << d.d[i];
  os << "]";
  return os.str();
}

int64_t volume(Dims const& d) {
  int64_t v = 1;
  for (int32_t i = 0; i < d.nbDims; ++i) v *= d.d[i];
  return v;
}

void expectRank(Dims const& d, int32_t rank, char const* what, char const* layout) {
  DSATTN_CHECK(d.nbDims == rank, what << " must have rank " << rank << " " << layout << ", got shape " << dimsToString(d));
}

void expectDim(Dims const& d, int32_t axis, int64_t want, char const* what, char const* wantName) {
  if (!known(d.d[axis]) || !known(want)) return;
  DSATTN_CHECK(d.d[axis] == want, what << " dim " << axis << " must be " << wantName << "=" << want << ", got shape "
                                       << dimsToString(d));
}

void* workspaceQueryPointer(int slot) {
  return reinterpret_cast<void*>((static_cast<uintptr_t>(1) << 20) + static_cast<uintptr_t>(slot) * 4096);
}

void checkNotCapturing(cudaStream_t stream, char const* what) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  DSATTN_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  DSATTN_CHECK(status == cudaStreamCaptureStatusNone,
               what << " must be set up before CUDA graph capture (attachToContext was not called on this instance)");
}

bool isAbsent(int32_t index, int32_t nbInputs, Dims const* dims) {
  if (index >= nbInputs) return true;
  if (dims == nullptr) return true;
  Dims const& d = dims[index];
  return d.nbDims <= 0 || (d.nbDims == 1 && d.d[0] == 0);
}

bool isAbsentExpr(int32_t index, int32_t nbInputs, DimsExprs const* inputs) {
  if (index >= nbInputs || inputs == nullptr) return true;
  DimsExprs const& d = inputs[index];
  if (d.nbDims <= 0) return true;
  return d.nbDims == 1 && d.d[0] != nullptr && d.d[0]->isConstant() && d.d[0]->getConstantValue() == 0;
}

// ---- attribute table -------------------------------------------------------------------------

AttrValues::AttrValues(std::vector<AttrSpec> const* table) : mTable(table), mValues(table->size()) {
  for (size_t i = 0; i < table->size(); ++i) {
    AttrSpec const& s = (*table)[i];
    if (s.hasDefault && s.kind != AttrKind::kFLOATS) {
      mValues[i].set = true;
      mValues[i].i = static_cast<int32_t>(s.defaultValue);
      mValues[i].f = static_cast<float>(s.defaultValue);
    } else if (s.hasDefault) {
      mValues[i].set = true;  // FLOATS default: empty list
    }
  }
}

size_t AttrValues::index(char const* name) const {
  DSATTN_CHECK(mTable != nullptr, "attribute table not set");
  for (size_t i = 0; i < mTable->size(); ++i) {
    if (std::strcmp((*mTable)[i].name, name) == 0) return i;
  }
  DSATTN_CHECK(false, "internal error: no attribute named '" << name << "' in the table");
  return 0;
}

bool AttrValues::isSet(char const* name) const { return mValues[index(name)].set; }

int32_t AttrValues::getInt(char const* name) const {
  size_t i = index(name);
  DSATTN_CHECK(mValues[i].set, "attribute '" << name << "' has no value");
  return mValues[i].i;
}

float AttrValues::getFloat(char const* name) const {
  size_t i = index(name);
  DSATTN_CHECK(mValues[i].set, "attribute '" << name << "' has no value");
  return mValues[i].f;
}

std::vector<float> const& AttrValues::getFloats(char const* name) const { return mValues[index(name)].fs; }

void AttrValues::setInt(char const* name, int32_t v) {
  size_t i = index(name);
  mValues[i].set = true;
  mValues[i].i = v;
}

void AttrValues::setFloat(char const* name, float v) {
  size_t i = index(name);
  mValues[i].set = true;
  mValues[i].f = v;
}

void AttrValues::setFloats(char const* name, std::vector<float> v) {
  size_t i = index(name);
  mValues[i].set = true;
  mValues[i].fs = std::move(v);
}

namespace {
char const* fieldTypeName(PluginFieldType t) {
  switch (t) {
    case PluginFieldType::kFLOAT16: return "kFLOAT16";
    case PluginFieldType::kFLOAT32: return "kFLOAT32";
    case PluginFieldType::kFLOAT64: return "kFLOAT64";
    case PluginFieldType::kINT8: return "kINT8";
    case PluginFieldType::kINT16: return "kINT16";
    case PluginFieldType::kINT32: return "kINT32";
    case PluginFieldType::kCHAR: return "kCHAR";
    case PluginFieldType::kDIMS: return "kDIMS";
    case PluginFieldType::kUNKNOWN: return "kUNKNOWN";
    case PluginFieldType::kBF16: return "kBF16";
    case PluginFieldType::kINT64: return "kINT64";
    case PluginFieldType::kFP8: return "kFP8";
    case PluginFieldType::kINT4: return "kINT4";
    case PluginFieldType::kFP4: return "kFP4";
  }
  return "invalid";
}

// Longest string field accepted (plugin_version / plugin_namespace are a few bytes).
constexpr int32_t kMAX_STRING_FIELD = 1024;

// kCHAR field -> std::string. The ONNX parser's length counts a trailing NUL; a caller building
// fields by hand may not count it. Trailing NULs are dropped, embedded ones rejected.
std::string readStringField(PluginField const& f, char const* op) {
  DSATTN_CHECK(f.type == PluginFieldType::kCHAR, op << ": field '" << f.name << "' must be a string (kCHAR), got "
                                                     << fieldTypeName(f.type));
  DSATTN_CHECK(f.length >= 0 && f.length <= kMAX_STRING_FIELD,
               op << ": field '" << f.name << "' has length " << f.length << " (expected 0.." << kMAX_STRING_FIELD << ")");
  DSATTN_CHECK(f.length == 0 || f.data != nullptr, op << ": field '" << f.name << "' has length " << f.length
                                                      << " but no data (nullptr)");
  std::string s(static_cast<char const*>(f.data), static_cast<size_t>(f.length));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  DSATTN_CHECK(s.find('\0') == std::string::npos, op << ": field '" << f.name << "' holds an embedded NUL");
  return s;
}
}  // namespace

AttrValues AttrValues::parse(std::vector<AttrSpec> const& table, PluginFieldCollection const* fc, char const* op) {
  DSATTN_CHECK(fc != nullptr, op << ": createPlugin got a null PluginFieldCollection");
  DSATTN_CHECK(fc->nbFields >= 0, op << ": PluginFieldCollection.nbFields=" << fc->nbFields << " is negative");
  DSATTN_CHECK(fc->nbFields == 0 || fc->fields != nullptr,
               op << ": PluginFieldCollection has nbFields=" << fc->nbFields << " but fields=nullptr");
  // A collection has at most one field per table row plus plugin_version/plugin_namespace (which
  // only callers other than TensorRT's ONNX parser send); a larger count is a corrupt collection
  // (and would make the duplicate check below quadratic).
  int32_t const maxFields = static_cast<int32_t>(table.size()) + 2;
  DSATTN_CHECK(fc->nbFields <= maxFields,
               op << ": PluginFieldCollection has " << fc->nbFields << " fields; " << op << " has at most " << maxFields);
  AttrValues v(&table);
  std::vector<bool> seen(table.size(), false);
  bool seenVersion = false, seenNamespace = false;
  for (int32_t k = 0; k < fc->nbFields; ++k) {
    PluginField const& f = fc->fields[k];
    DSATTN_CHECK(f.name != nullptr, op << ": field " << k << " has no name (nullptr)");
    std::string const name(f.name, strnlen(f.name, 256));
    DSATTN_CHECK(name.size() < 256, op << ": field " << k << " has a name longer than 255 characters");
    if (name == "plugin_version" || name == "plugin_namespace") {
      bool& seenIt = name == "plugin_version" ? seenVersion : seenNamespace;
      DSATTN_CHECK(!seenIt, op << ": field '" << name << "' given twice");
      seenIt = true;
      std::string const s = readStringField(f, op);
      try {
        ops::checkPluginString(name, s);
      } catch (ops::AttrError const& e) {
        DSATTN_CHECK(false, op << ": " << e.what());
      }
      continue;
    }
    size_t idx = table.size();
    for (size_t i = 0; i < table.size(); ++i) {
      if (name == table[i].name) idx = i;
    }
    if (idx == table.size()) {
      std::ostringstream known;
      for (size_t i = 0; i < table.size(); ++i) known << (i ? ", " : "") << table[i].name;
      DSATTN_CHECK(false, op << ": unknown field '" << name << "' (known: " << known.str()
                             << ", plugin_version, plugin_namespace)");
    }
    AttrSpec const& s = table[idx];
    DSATTN_CHECK(!seen[idx], op << ": field '" << name << "' given twice");
    seen[idx] = true;
    PluginFieldType const want = s.kind == AttrKind::kINT ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32;
    DSATTN_CHECK(f.type == want, op << ": field '" << name << "' must be " << fieldTypeName(want) << " ("
                                    << (s.kind == AttrKind::kINT ? "ONNX INT" : s.kind == AttrKind::kFLOAT ? "ONNX FLOAT" : "ONNX FLOATS")
                                    << "), got " << fieldTypeName(f.type));
    if (s.kind == AttrKind::kFLOATS) {
      DSATTN_CHECK(f.length >= 0 && f.length <= s.maxCount,
                   op << ": field '" << name << "' has " << f.length << " values (expected 0.." << s.maxCount << ")");
    } else {
      DSATTN_CHECK(f.length == 1, op << ": field '" << name << "' must hold exactly 1 value, got length " << f.length);
    }
    DSATTN_CHECK(f.length == 0 || f.data != nullptr,
                 op << ": field '" << name << "' has length " << f.length << " but no data (nullptr)");
    Value& out = v.mValues[idx];
    out.set = true;
    // Range and finiteness: the runtime-neutral checks (op_attrs.h), prefixed with the op.
    try {
      if (s.kind == AttrKind::kINT) {
        int32_t x;
        std::memcpy(&x, f.data, sizeof(x));
        out.i = ops::checkInt(s, x);
      } else if (s.kind == AttrKind::kFLOAT) {
        float x;
        std::memcpy(&x, f.data, sizeof(x));
        out.f = ops::checkFloat(s, x);
      } else {
        out.fs.resize(static_cast<size_t>(f.length));
        if (f.length > 0) std::memcpy(out.fs.data(), f.data, sizeof(float) * static_cast<size_t>(f.length));
        ops::checkFloats(s, out.fs);
      }
    } catch (ops::AttrError const& e) {
      DSATTN_CHECK(false, op << ": " << e.what());
    }
  }
  for (size_t i = 0; i < table.size(); ++i) {
    DSATTN_CHECK(!table[i].required || seen[i], op << ": required attribute '" << table[i].name << "' is missing");
  }
  return v;
}

PluginFieldCollection const* AttrValues::toFields() {
  static float const kEmpty = 0.f;  // data pointer of an empty FLOATS field (never read)
  mFields.clear();
  for (size_t i = 0; i < mTable->size(); ++i) {
    AttrSpec const& s = (*mTable)[i];
    Value const& val = mValues[i];
    if (!val.set) continue;  // unresolved optional attribute: the op resolves it on re-creation
    if (s.kind == AttrKind::kINT) {
      mFields.emplace_back(s.name, &val.i, PluginFieldType::kINT32, 1);
    } else if (s.kind == AttrKind::kFLOAT) {
      mFields.emplace_back(s.name, &val.f, PluginFieldType::kFLOAT32, 1);
    } else {
      mFields.emplace_back(s.name, val.fs.empty() ? &kEmpty : val.fs.data(), PluginFieldType::kFLOAT32,
                           static_cast<int32_t>(val.fs.size()));
    }
  }
  mFC.nbFields = static_cast<int32_t>(mFields.size());
  mFC.fields = mFields.data();
  return &mFC;
}

std::string AttrValues::toString() const {
  std::ostringstream os;
  for (size_t i = 0; i < mTable->size(); ++i) {
    AttrSpec const& s = (*mTable)[i];
    Value const& val = mValues[i];
    os << (i ? ", " : "") << s.name << "=";
    if (!val.set) {
      os << "(unset)";
    } else if (s.kind == AttrKind::kINT) {
      os << val.i;
    } else if (s.kind == AttrKind::kFLOAT) {
      os << val.f;
    } else {
      os << "[" << val.fs.size() << " values]";
    }
  }
  return os.str();
}

std::vector<PluginField> fieldNamesFromTable(std::vector<AttrSpec> const& table) {
  std::vector<PluginField> out;
  for (AttrSpec const& s : table) {
    PluginFieldType const t = s.kind == AttrKind::kINT ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32;
    out.emplace_back(s.name, nullptr, t, s.kind == AttrKind::kFLOATS ? 0 : 1);
  }
  return out;
}

// ---- plugin base -----------------------------------------------------------------------------

void PluginBase::reportError(char const* method, char const* what) const noexcept {
  try {
    log(Severity::kERROR, std::string(mOpName) + "::" + method + ": " + what);
  } catch (...) {
  }
}

#define DSATTN_ENTRY(method, failValue, ...)                     \
  try {                                                           \
    __VA_ARGS__                                                   \
  } catch (std::exception const& e) {                             \
    reportError(method, e.what());                                \
  } catch (...) {                                                 \
    reportError(method, "unknown exception");                     \
  }                                                               \
  return failValue;

IPluginCapability* PluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuildV2*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
  }
  reportError("getCapabilityInterface", "unknown capability type");
  return nullptr;
}

IPluginV3* PluginBase::clone() noexcept {
  DSATTN_ENTRY("clone", nullptr, {
    PluginBase* p = cloneImpl();
    p->mNbInputs = mNbInputs;
    return p;
  })
}

int32_t PluginBase::getNbOutputs() const noexcept {
  DSATTN_ENTRY("getNbOutputs", -1, { return nbOutputsImpl(); })
}

int32_t PluginBase::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                       int32_t nbInputs) const noexcept {
  DSATTN_ENTRY("getOutputDataTypes", -1, {
    DSATTN_CHECK(outputTypes != nullptr && (inputTypes != nullptr || nbInputs == 0), "null type array");
    DSATTN_CHECK(nbOutputs == nbOutputsImpl(), "TensorRT asks for " << nbOutputs << " outputs, the node has "
                                                                    << nbOutputsImpl());
    outputTypesImpl(outputTypes, nbOutputs, inputTypes, nbInputs);
    return 0;
  })
}

int32_t PluginBase::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                                    int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
                                    IExprBuilder& exprBuilder) noexcept {
  DSATTN_ENTRY("getOutputShapes", -1, {
    DSATTN_CHECK(nbShapeInputs == 0, "the op takes no shape inputs, got " << nbShapeInputs
                                     << " (remove tensorrt_plugin_shape_input_indices from the node)");
    DSATTN_CHECK(outputs != nullptr && (inputs != nullptr || nbInputs == 0), "null DimsExprs array");
    DSATTN_CHECK(nbOutputs == nbOutputsImpl(), "TensorRT asks for " << nbOutputs << " outputs, the node has "
                                                                    << nbOutputsImpl());
    outputShapesImpl(inputs, nbInputs, outputs, nbOutputs, exprBuilder);
    return 0;
  })
}

bool PluginBase::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                           int32_t nbOutputs) noexcept {
  DSATTN_ENTRY("supportsFormatCombination", false, {
    DSATTN_CHECK(inOut != nullptr, "null tensor descriptions");
    DSATTN_CHECK(pos >= 0 && pos < nbInputs + nbOutputs, "position " << pos << " outside [0, " << nbInputs + nbOutputs << ")");
    DSATTN_CHECK(nbOutputs == nbOutputsImpl(), "got " << nbOutputs << " outputs, the node has " << nbOutputsImpl());
    // Every kernel reads and writes dense row-major tensors.
    if (inOut[pos].desc.format != TensorFormat::kLINEAR) return false;
    return supportsImpl(pos, inOut, nbInputs, nbOutputs);
  })
}

int32_t PluginBase::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                    DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  DSATTN_ENTRY("configurePlugin", -1, {
    DSATTN_CHECK((in != nullptr || nbInputs == 0) && (out != nullptr || nbOutputs == 0), "null tensor descriptions");
    DSATTN_CHECK(nbOutputs == nbOutputsImpl(), "got " << nbOutputs << " outputs, the node has " << nbOutputsImpl());
    std::vector<Dims> inDims(nbInputs), outDims(nbOutputs);
    std::vector<DataType> inTypes(nbInputs);
    for (int32_t i = 0; i < nbInputs; ++i) {
      inDims[i] = in[i].desc.dims;
      inTypes[i] = in[i].desc.type;
    }
    for (int32_t i = 0; i < nbOutputs; ++i) outDims[i] = out[i].desc.dims;
    checkShapesImpl(inDims.data(), inTypes.data(), nbInputs, outDims.data(), nbOutputs);
    // The max shapes must be valid too (they size the workspace).
    for (int32_t i = 0; i < nbInputs; ++i) inDims[i] = in[i].max;
    for (int32_t i = 0; i < nbOutputs; ++i) outDims[i] = out[i].max;
    checkShapesImpl(inDims.data(), inTypes.data(), nbInputs, outDims.data(), nbOutputs);
    mNbInputs = nbInputs;
    return 0;
  })
}

size_t PluginBase::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept {
  // 0 on error: TensorRT has no failure value here; enqueue then rejects the missing workspace.
  DSATTN_ENTRY("getWorkspaceSize", 0, {
    DSATTN_CHECK(inputs != nullptr || nbInputs == 0, "null tensor descriptions");
    std::vector<Dims> maxDims(nbInputs);
    std::vector<DataType> types(nbInputs);
    for (int32_t i = 0; i < nbInputs; ++i) {
      maxDims[i] = inputs[i].max;
      types[i] = inputs[i].desc.type;
    }
    return workspaceImpl(maxDims.data(), types.data(), nbInputs);
  })
}

int32_t PluginBase::getAliasedInput(int32_t outputIndex) noexcept {
  DSATTN_ENTRY("getAliasedInput", -1, { return aliasedInputImpl(outputIndex); })
}

int32_t PluginBase::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                                  int32_t nbOutputs) noexcept {
  DSATTN_ENTRY("onShapeChange", -1, {
    DSATTN_CHECK((in != nullptr || nbInputs == 0) && (out != nullptr || nbOutputs == 0), "null tensor descriptions");
    DSATTN_CHECK(nbOutputs == nbOutputsImpl(), "got " << nbOutputs << " outputs, the node has " << nbOutputsImpl());
    std::vector<Dims> inDims(nbInputs), outDims(nbOutputs);
    std::vector<DataType> inTypes(nbInputs);
    for (int32_t i = 0; i < nbInputs; ++i) {
      inDims[i] = in[i].dims;
      inTypes[i] = in[i].type;
      for (int32_t j = 0; j < in[i].dims.nbDims; ++j) {
        DSATTN_CHECK(in[i].dims.d[j] >= 0, "input " << i << " has unresolved shape " << dimsToString(in[i].dims));
      }
    }
    for (int32_t i = 0; i < nbOutputs; ++i) outDims[i] = out[i].dims;
    checkShapesImpl(inDims.data(), inTypes.data(), nbInputs, outDims.data(), nbOutputs);
    mNbInputs = nbInputs;
    return 0;
  })
}

int32_t PluginBase::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                            void const* const* inputs, void* const* outputs, void* workspace,
                            cudaStream_t stream) noexcept {
  DSATTN_ENTRY("enqueue", -1, {
    DSATTN_CHECK(mNbInputs >= 0, "enqueue before onShapeChange/configurePlugin (input count unknown)");
    DSATTN_CHECK(inputDesc != nullptr && outputDesc != nullptr && inputs != nullptr && outputs != nullptr,
                 "null tensor descriptions or pointers");
    enqueueImpl(inputDesc, outputDesc, mNbInputs, inputs, outputs, workspace, stream);
    return 0;
  })
}

IPluginV3* PluginBase::attachToContext(IPluginResourceContext* /*context*/) noexcept {
  DSATTN_ENTRY("attachToContext", nullptr, {
    std::unique_ptr<PluginBase> p(cloneImpl());
    p->mNbInputs = mNbInputs;
    p->attachImpl();
    return p.release();
  })
}

PluginFieldCollection const* PluginBase::getFieldsToSerialize() noexcept {
  DSATTN_ENTRY("getFieldsToSerialize", nullptr, { return mAttrs.toFields(); })
}

// ---- creator ---------------------------------------------------------------------------------

Creator::Creator(char const* opName, std::vector<AttrSpec> const* table, PluginFactory factory)
    : mOpName(opName), mTable(table), mFactory(factory), mFieldNames(fieldNamesFromTable(*table)) {
  mFC.nbFields = static_cast<int32_t>(mFieldNames.size());
  mFC.fields = mFieldNames.data();
}

IPluginV3* Creator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept {
  try {
    AttrValues attrs = AttrValues::parse(*mTable, fc, mOpName);
    return mFactory(std::move(attrs));
  } catch (std::exception const& e) {
    log(Severity::kERROR, std::string(mOpName) + " createPlugin(" + (name ? name : "<unnamed>") + ", " +
                              (phase == TensorRTPhase::kBUILD ? "kBUILD" : "kRUNTIME") + "): " + e.what());
  } catch (...) {
    log(Severity::kERROR, std::string(mOpName) + " createPlugin: unknown exception");
  }
  return nullptr;
}

}  // namespace plugin
}  // namespace dsattn
