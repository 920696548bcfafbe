// Host harness for libdsattn_plugins.so: drives each plugin through the calls TensorRT makes, without
// TensorRT (which could not be installed where this project is tested; docs/DESIGN.md, "Verification").
//
//   dsattn_plugin_harness --selftest LIB          creator fields, malformed field collections and
//                                                 shape / type negotiation (CPU only, no GPU)
//   dsattn_plugin_harness LIB CASE_DIR...         one GPU case per directory (manifest.txt + .bin
//                                                 files written by tests/test_plugins_harness.py)
//   dsattn_plugin_harness --build-only LIB DIR... the build-time calls only (no GPU, no data files:
//                                                 FILE may be '-'), e.g. for nodes of exported models
//   dsattn_plugin_harness --fields LIB            print every creator's getFieldNames()
//
// Manifest (one item per line): `op NAME`; `attr_i|attr_f|attr_s NAME VALUE`; `attr_fs NAME COUNT
// V...`; `input IDX DTYPE RANK DIMS... FILE` (raw little-endian data in DTYPE); `absent IDX` (an empty
// optional input in the middle: passed with nbDims 0 and a null pointer, our reading of how TensorRT
// presents the parser's nullptr input); `maxdims IDX RANK DIMS...` (profile max for configurePlugin /
// getWorkspaceSize); `output IDX DTYPE RANK DIMS... FILE|nan ATOL` (FILE: float32 reference; nan:
// every value must be NaN); `alias OUT IN`; `status 0|1` (SoftmaxContext's device status word, read
// white-box from the first 4 bytes of the workspace).
//
// Like trtexec --dynamicPlugins, the harness dlopens LIB, calls setLoggerFinder with its own logger
// finder and getCreators, then for each case: createPlugin(kBUILD) -> clone -> getOutputDataTypes ->
// getOutputShapes (constant and symbolic dims) -> supportsFormatCombination at every position against
// every data type -> configurePlugin (static and fully dynamic dims) -> getWorkspaceSize ->
// getAliasedInput -> attachToContext -> onShapeChange -> enqueue (separate present buffers) -> compare
// with the reference -> getFieldsToSerialize -> createPlugin(kRUNTIME) from a deep copy ->
// attachToContext -> enqueue (aliased buffers) -> same bits as the first run -> the same enqueue
// captured into a CUDA graph and replayed -> same bits.
//
// IExprBuilder / IDimensionExpr: their public methods are inline wrappers over a pimpl pointer
// (apiv::VExprBuilder / apiv::VDimensionExpr in NvInferImpl.h, "do not inherit"). The only way to
// give a plugin an expression builder outside TensorRT is to subclass both the API class (to set the
// protected mImpl) and the apiv interface; that is what Expr and ExprBuilder do. It is test-only
// code tied to the header version it is compiled against (same as the plugin library).
#include <NvInferRuntime.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

// ---- logger -----------------------------------------------------------------------------------

class HarnessLogger : public ILogger {
 public:
  void log(Severity severity, char const* msg) noexcept override {
    if (severity <= Severity::kERROR) ++errors;
    last = msg ? msg : "";
    if (severity <= Severity::kWARNING || verbose) {
      std::printf("    [plugin %s] %s\n", severity <= Severity::kERROR ? "error" : "log", last.c_str());
    }
  }
  int errors = 0;
  bool verbose = false;
  std::string last;
};

class HarnessLoggerFinder : public ILoggerFinder {
 public:
  explicit HarnessLoggerFinder(ILogger* l) : mLogger(l) {}
  ILogger* findLogger() override { return mLogger; }
  ~HarnessLoggerFinder() override = default;

 private:
  ILogger* mLogger;
};

HarnessLogger gLogger;
HarnessLoggerFinder gFinder(&gLogger);

// ---- expression builder -------------------------------------------------------------------------

class Expr : public IDimensionExpr, public apiv::VDimensionExpr {
 public:
  Expr(int64_t value, bool constant) : mValue(value), mConst(constant) { mImpl = this; }
  ~Expr() noexcept override = default;
  bool isConstant() const override { return mConst; }
  int64_t getConstantValue() const override { return mConst ? mValue : std::numeric_limits<int64_t>::min(); }
  bool isSizeTensor() const override { return false; }
  int64_t value() const { return mValue; }  // the harness knows symbolic values too

 private:
  int64_t mValue;
  bool mConst;
};

class ExprBuilder : public IExprBuilder, public apiv::VExprBuilder {
 public:
  ExprBuilder() { mImpl = this; }
  ~ExprBuilder() noexcept override = default;
  IDimensionExpr const* constant(int64_t v) override { return make(v, true); }
  IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override {
    auto const* x = dynamic_cast<Expr const*>(&a);
    auto const* y = dynamic_cast<Expr const*>(&b);
    if (x == nullptr || y == nullptr) throw std::runtime_error("operation on an expression not made by this builder");
    int64_t const p = x->value(), q = y->value();
    int64_t r = 0;
    switch (op) {
      case DimensionOperation::kSUM: r = p + q; break;
      case DimensionOperation::kPROD: r = p * q; break;
      case DimensionOperation::kMAX: r = p > q ? p : q; break;
      case DimensionOperation::kMIN: r = p < q ? p : q; break;
      case DimensionOperation::kSUB: r = p - q; break;
      case DimensionOperation::kEQUAL: r = p == q; break;
      case DimensionOperation::kLESS: r = p < q; break;
      case DimensionOperation::kFLOOR_DIV:
        if (q == 0) return nullptr;
        r = p / q - ((p % q != 0) && ((p < 0) != (q < 0)));
        break;
      case DimensionOperation::kCEIL_DIV:
        if (q == 0) return nullptr;
        r = p / q + ((p % q != 0) && ((p < 0) == (q < 0)));
        break;
      default: return nullptr;
    }
    return make(r, x->isConstant() && y->isConstant());
  }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
    return nullptr;  // no dsattn op has data-dependent output shapes
  }
  Expr const* make(int64_t v, bool constant) {
    mPool.emplace_back(new Expr(v, constant));
    return mPool.back().get();
  }
  static int64_t eval(IDimensionExpr const* e) {
    auto const* x = dynamic_cast<Expr const*>(e);
    if (x == nullptr) throw std::runtime_error("output expression not made by this builder (or null)");
    return x->value();
  }

 private:
  std::vector<std::unique_ptr<Expr>> mPool;
};

class ResourceContext : public IPluginResourceContext {
 public:
  IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
  IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
};

// ---- small utilities ------------------------------------------------------------------------------

#define HCHECK(cond, msg)                                                         \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::ostringstream os_;                                                     \
      os_ << __FILE__ << ":" << __LINE__ << ": " << msg;                          \
      throw std::runtime_error(os_.str());                                        \
    }                                                                             \
  } while (0)
#define HCUDA(expr)                                                                                      \
  do {                                                                                                   \
    cudaError_t e_ = (expr);                                                                             \
    HCHECK(e_ == cudaSuccess, #expr << ": " << cudaGetErrorName(e_) << " " << cudaGetErrorString(e_)); \
  } while (0)

DataType const kALL_TYPES[] = {DataType::kFLOAT, DataType::kHALF, DataType::kINT8,  DataType::kINT32,
                               DataType::kBOOL,  DataType::kUINT8, DataType::kFP8,  DataType::kBF16,
                               DataType::kINT64, DataType::kINT4,  DataType::kFP4,  DataType::kE8M0};

DataType parseType(std::string const& s) {
  if (s == "float32") return DataType::kFLOAT;
  if (s == "float16") return DataType::kHALF;
  if (s == "bfloat16") return DataType::kBF16;
  if (s == "int8") return DataType::kINT8;
  if (s == "int32") return DataType::kINT32;
  throw std::runtime_error("unknown dtype '" + s + "'");
}
size_t typeSize(DataType t) {
  switch (t) {
    case DataType::kFLOAT: case DataType::kINT32: return 4;
    case DataType::kHALF: case DataType::kBF16: return 2;
    case DataType::kINT8: return 1;
    default: throw std::runtime_error("typeSize: unsupported type");
  }
}
float halfToFloat(uint16_t h) {
  uint32_t const sign = (h >> 15) & 1, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  float v;
  if (exp == 0) v = std::ldexp(float(man), -24);
  else if (exp == 31) v = man ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else v = std::ldexp(float(man | 0x400), int(exp) - 25);
  return sign ? -v : v;
}
float bf16ToFloat(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float elementAsFloat(std::vector<char> const& b, size_t i, DataType t) {
  switch (t) {
    case DataType::kFLOAT: { float f; std::memcpy(&f, b.data() + 4 * i, 4); return f; }
    case DataType::kHALF: { uint16_t h; std::memcpy(&h, b.data() + 2 * i, 2); return halfToFloat(h); }
    case DataType::kBF16: { uint16_t h; std::memcpy(&h, b.data() + 2 * i, 2); return bf16ToFloat(h); }
    case DataType::kINT32: { int32_t x; std::memcpy(&x, b.data() + 4 * i, 4); return float(x); }
    case DataType::kINT8: return float(static_cast<int8_t>(b[i]));
    default: throw std::runtime_error("elementAsFloat: unsupported type");
  }
}
int64_t volumeOf(Dims const& d) {
  int64_t v = 1;
  for (int32_t i = 0; i < d.nbDims; ++i) v *= d.d[i];
  return v;
}
std::string str(Dims const& d) {
  std::ostringstream os;
  os << "[";
  for (int32_t i = 0; i < d.nbDims; ++i) os << (i ? "," : "") << d.d[i];
  os << "]";
  return os.str();
}
std::vector<char> readFile(std::string const& path) {
  std::ifstream f(path, std::ios::binary);
  HCHECK(f.good(), "cannot open " << path);
  return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// ---- plugin library ---------------------------------------------------------------------------------

struct Library {
  void* handle = nullptr;
  std::vector<IPluginCreatorV3One*> creators;

  explicit Library(std::string const& path) {
    handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    HCHECK(handle != nullptr, "dlopen(" << path << ") failed: " << dlerror());
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    auto setFinder = reinterpret_cast<SetLoggerFinder>(dlsym(handle, "setLoggerFinder"));
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
    HCHECK(setFinder != nullptr && getCreators != nullptr, "LIB lacks setLoggerFinder / getCreators");
    setFinder(&gFinder);
    int32_t n = 0;
    IPluginCreatorInterface* const* list = getCreators(n);
    HCHECK(list != nullptr && n == 3, "getCreators returned " << n << " creators (expected 3)");
    for (int32_t i = 0; i < n; ++i) {
      InterfaceInfo const info = list[i]->getInterfaceInfo();
      HCHECK(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1,
             "creator " << i << " is " << info.kind << " v" << info.major << " (expected PLUGIN CREATOR_V3ONE v1)");
      auto* c = static_cast<IPluginCreatorV3One*>(list[i]);
      HCHECK(std::strcmp(c->getPluginVersion(), "1") == 0 && std::strcmp(c->getPluginNamespace(), "dsattn") == 0,
             "creator " << c->getPluginName() << " has version/namespace " << c->getPluginVersion() << "/"
                        << c->getPluginNamespace());
      creators.push_back(c);
    }
  }
  IPluginCreatorV3One* creator(std::string const& op) const {
    for (auto* c : creators)
      if (op == c->getPluginName()) return c;
    throw std::runtime_error("no creator named " + op);
  }
};

// Owns the storage of a PluginFieldCollection (names and data), like TensorRT's serializer does.
struct Fields {
  std::vector<std::string> names;
  std::vector<std::vector<char>> data;
  std::vector<PluginFieldType> types;
  std::vector<int32_t> lengths;
  std::vector<PluginField> fields;
  PluginFieldCollection fc{};

  void addRaw(std::string name, PluginFieldType t, void const* p, size_t bytes, int32_t length) {
    names.push_back(std::move(name));
    data.emplace_back(static_cast<char const*>(p), static_cast<char const*>(p) + bytes);
    types.push_back(t);
    lengths.push_back(length);
  }
  void addInt(std::string n, int32_t v) { addRaw(std::move(n), PluginFieldType::kINT32, &v, 4, 1); }
  void addFloat(std::string n, float v) { addRaw(std::move(n), PluginFieldType::kFLOAT32, &v, 4, 1); }
  void addFloats(std::string n, std::vector<float> const& v) {
    addRaw(std::move(n), PluginFieldType::kFLOAT32, v.data(), v.size() * 4, int32_t(v.size()));
  }
  // The ONNX parser's STRING: kCHAR, length counting the trailing NUL.
  void addString(std::string n, std::string const& s) {
    addRaw(std::move(n), PluginFieldType::kCHAR, s.c_str(), s.size() + 1, int32_t(s.size() + 1));
  }
  PluginFieldCollection const* get() {
    fields.clear();
    for (size_t i = 0; i < names.size(); ++i)
      fields.emplace_back(names[i].c_str(), data[i].empty() ? nullptr : data[i].data(), types[i], lengths[i]);
    fc.nbFields = int32_t(fields.size());
    fc.fields = fields.data();
    return &fc;
  }
  static size_t elemSize(PluginFieldType t) {
    switch (t) {
      case PluginFieldType::kINT32: case PluginFieldType::kFLOAT32: return 4;
      case PluginFieldType::kCHAR: case PluginFieldType::kINT8: return 1;
      case PluginFieldType::kFLOAT64: case PluginFieldType::kINT64: return 8;
      case PluginFieldType::kFLOAT16: case PluginFieldType::kBF16: case PluginFieldType::kINT16: return 2;
      default: throw std::runtime_error("unexpected field type in serialized fields");
    }
  }
  static Fields deepCopy(PluginFieldCollection const* fc) {
    HCHECK(fc != nullptr, "getFieldsToSerialize returned null");
    Fields f;
    for (int32_t i = 0; i < fc->nbFields; ++i) {
      PluginField const& p = fc->fields[i];
      HCHECK(p.name != nullptr && p.length >= 0, "serialized field " << i << " malformed");
      size_t const bytes = elemSize(p.type) * size_t(p.length);
      HCHECK(bytes == 0 || p.data != nullptr, "serialized field " << p.name << " has no data");
      f.addRaw(p.name, p.type, p.data, bytes, p.length);
    }
    return f;
  }
  bool operator==(Fields const& o) const {
    return names == o.names && data == o.data && types == o.types && lengths == o.lengths;
  }
};

struct PluginPtr {
  IPluginV3* p = nullptr;
  explicit PluginPtr(IPluginV3* q = nullptr) : p(q) {}
  PluginPtr(PluginPtr const&) = delete;
  PluginPtr& operator=(PluginPtr const&) = delete;
  ~PluginPtr() { delete p; }
  IPluginV3OneCore* core() const { return static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE)); }
  IPluginV3OneBuildV2* build() const {
    auto* c = p->getCapabilityInterface(PluginCapabilityType::kBUILD);
    HCHECK(c != nullptr, "no build capability");
    InterfaceInfo const info = c->getInterfaceInfo();
    HCHECK(std::strcmp(info.kind, "PLUGIN_V3ONE_BUILD") == 0 && info.major == 2,
           "build capability is " << info.kind << " v" << info.major << " (expected PLUGIN_V3ONE_BUILD v2 for aliasing)");
    return static_cast<IPluginV3OneBuildV2*>(c);
  }
  IPluginV3OneRuntime* runtime() const {
    auto* c = p->getCapabilityInterface(PluginCapabilityType::kRUNTIME);
    HCHECK(c != nullptr && std::strcmp(c->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0, "no runtime capability");
    return static_cast<IPluginV3OneRuntime*>(c);
  }
};

// ---- case manifest ------------------------------------------------------------------------------------

struct Tensor {
  bool absent = false;
  DataType type = DataType::kFLOAT;
  Dims dims{};
  Dims maxDims{};
  std::string file;  // inputs: data; outputs: expected data or "nan"
  double atol = 0;
};

struct Case {
  std::string dir, op;
  Fields fields;
  std::vector<Tensor> inputs, outputs;
  std::vector<int32_t> alias;  // per output: aliased input or -1
  bool checkStatus = false;
  int32_t expectStatusNonzero = 0;
};

Dims readDims(std::istream& is) {
  Dims d{};
  is >> d.nbDims;
  HCHECK(d.nbDims >= 0 && d.nbDims <= Dims::MAX_DIMS, "bad rank " << d.nbDims);
  for (int32_t i = 0; i < d.nbDims; ++i) is >> d.d[i];
  return d;
}

Case readCase(std::string const& dir) {
  Case c;
  c.dir = dir;
  std::ifstream f(dir + "/manifest.txt");
  HCHECK(f.good(), "cannot open " << dir << "/manifest.txt");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream is(line);
    std::string key;
    if (!(is >> key) || key[0] == '#') continue;
    if (key == "op") {
      is >> c.op;
    } else if (key == "attr_i") {
      std::string n; int64_t v; is >> n >> v;
      c.fields.addInt(n, int32_t(v));
    } else if (key == "attr_f") {
      std::string n, v; is >> n >> v;
      c.fields.addFloat(n, std::strtof(v.c_str(), nullptr));
    } else if (key == "attr_fs") {
      std::string n; int32_t cnt; is >> n >> cnt;
      std::vector<float> v(cnt);
      for (auto& x : v) { std::string s; is >> s; x = std::strtof(s.c_str(), nullptr); }
      c.fields.addFloats(n, v);
    } else if (key == "attr_s") {
      std::string n, v; is >> n >> v;
      c.fields.addString(n, v);
    } else if (key == "input" || key == "output") {
      size_t idx; std::string t;
      is >> idx >> t;
      Tensor x;
      x.type = parseType(t);
      x.dims = readDims(is);
      x.maxDims = x.dims;
      is >> x.file;
      if (key == "output") is >> x.atol;
      auto& v = key == "input" ? c.inputs : c.outputs;
      if (v.size() <= idx) v.resize(idx + 1);
      v[idx] = x;
    } else if (key == "absent") {
      size_t idx; is >> idx;
      if (c.inputs.size() <= idx) c.inputs.resize(idx + 1);
      c.inputs[idx] = Tensor{};
      c.inputs[idx].absent = true;
    } else if (key == "maxdims") {
      size_t idx; is >> idx;
      HCHECK(idx < c.inputs.size(), "maxdims before its input");
      c.inputs[idx].maxDims = readDims(is);
    } else if (key == "alias") {
      size_t o; int32_t i; is >> o >> i;
      if (c.alias.size() <= o) c.alias.resize(o + 1, -1);
      c.alias[o] = i;
    } else if (key == "status") {
      c.checkStatus = true;
      is >> c.expectStatusNonzero;
    } else {
      throw std::runtime_error("manifest: unknown key '" + key + "'");
    }
    HCHECK(!is.fail(), "manifest: cannot parse line '" << line << "'");
  }
  c.alias.resize(c.outputs.size(), -1);
  return c;
}

// ---- one GPU case --------------------------------------------------------------------------------------

struct DeviceBuffers {
  std::vector<void*> in, out;
  void* ws = nullptr;
  ~DeviceBuffers() {
    for (void* p : in) cudaFree(p);
    for (void* p : out) cudaFree(p);
    cudaFree(ws);
  }
};

std::vector<std::vector<char>> enqueueOnce(IPluginV3OneRuntime* rt, Case const& c, std::vector<std::vector<char>> const& hostIn,
                                           size_t wsBytes, bool aliased, int32_t* statusOut,
                                           uint8_t poison, bool graph = false) {
  int32_t const nbIn = int32_t(c.inputs.size()), nbOut = int32_t(c.outputs.size());
  std::vector<PluginTensorDesc> inDesc(nbIn), outDesc(nbOut);
  for (int32_t i = 0; i < nbIn; ++i) {
    inDesc[i].dims = c.inputs[i].absent ? Dims{} : c.inputs[i].dims;
    inDesc[i].type = c.inputs[i].absent ? DataType::kFLOAT : c.inputs[i].type;
    inDesc[i].format = TensorFormat::kLINEAR;
    inDesc[i].scale = -1.f;
  }
  for (int32_t o = 0; o < nbOut; ++o) {
    outDesc[o].dims = c.outputs[o].dims;
    outDesc[o].type = c.outputs[o].type;
    outDesc[o].format = TensorFormat::kLINEAR;
    outDesc[o].scale = -1.f;
  }
  HCHECK(rt->onShapeChange(inDesc.data(), nbIn, outDesc.data(), nbOut) == 0, "onShapeChange failed");
  DeviceBuffers b;
  b.in.assign(nbIn, nullptr);
  b.out.assign(nbOut, nullptr);
  for (int32_t i = 0; i < nbIn; ++i) {
    if (c.inputs[i].absent) continue;
    size_t const bytes = hostIn[i].size();
    HCUDA(cudaMalloc(&b.in[i], bytes ? bytes : 1));
    HCUDA(cudaMemcpy(b.in[i], hostIn[i].data(), bytes, cudaMemcpyHostToDevice));
  }
  std::vector<size_t> outBytes(nbOut);
  for (int32_t o = 0; o < nbOut; ++o) {
    outBytes[o] = size_t(volumeOf(c.outputs[o].dims)) * typeSize(c.outputs[o].type);
    if (aliased && c.alias[o] >= 0) continue;
    HCUDA(cudaMalloc(&b.out[o], outBytes[o] ? outBytes[o] : 1));
    HCUDA(cudaMemset(b.out[o], poison, outBytes[o]));
  }
  std::vector<void*> outPtrs(nbOut);
  for (int32_t o = 0; o < nbOut; ++o) outPtrs[o] = (aliased && c.alias[o] >= 0) ? b.in[c.alias[o]] : b.out[o];
  if (wsBytes) {
    // Exactly getWorkspaceSize and left uninitialized, as TensorRT's: compute-sanitizer memcheck
    // catches overruns, initcheck reads of scratch the plugin never wrote.
    HCUDA(cudaMalloc(&b.ws, wsBytes));
  }
  std::vector<void const*> inPtrs(b.in.begin(), b.in.end());
  cudaStream_t stream;
  HCUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  int32_t rc = 0;
  cudaError_t se = cudaSuccess;
  if (!graph) {
    rc = rt->enqueue(inDesc.data(), outDesc.data(), inPtrs.data(), outPtrs.data(), b.ws, stream);
    se = cudaStreamSynchronize(stream);
  } else {
    // What trtexec --useCudaGraph / an application capturing enqueueV3 does: the enqueue is recorded
    // into a graph (global capture mode: any unsafe call such as cudaMalloc fails), then launched.
    HCUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    rc = rt->enqueue(inDesc.data(), outDesc.data(), inPtrs.data(), outPtrs.data(), b.ws, stream);
    cudaGraph_t g = nullptr;
    cudaError_t const ce = cudaStreamEndCapture(stream, &g);
    cudaGraphExec_t ge = nullptr;
    if (ce == cudaSuccess && rc == 0) se = cudaGraphInstantiate(&ge, g, 0);
    if (ce == cudaSuccess && rc == 0 && se == cudaSuccess) se = cudaGraphLaunch(ge, stream);
    if (se == cudaSuccess) se = cudaStreamSynchronize(stream);
    if (ge) cudaGraphExecDestroy(ge);
    if (g) cudaGraphDestroy(g);
    HCHECK(ce == cudaSuccess, "stream capture of enqueue failed: " << cudaGetErrorName(ce));
  }
  cudaStreamDestroy(stream);
  HCHECK(rc == 0, "enqueue returned " << rc << (graph ? " (under CUDA graph capture)" : ""));
  HCUDA(se);
  HCUDA(cudaGetLastError());
  std::vector<std::vector<char>> result(nbOut);
  for (int32_t o = 0; o < nbOut; ++o) {
    result[o].resize(outBytes[o]);
    HCUDA(cudaMemcpy(result[o].data(), outPtrs[o], outBytes[o], cudaMemcpyDeviceToHost));
  }
  if (statusOut != nullptr && b.ws != nullptr) HCUDA(cudaMemcpy(statusOut, b.ws, 4, cudaMemcpyDeviceToHost));
  return result;
}

void compareOutputs(Case const& c, std::vector<std::vector<char>> const& got, char const* label) {
  for (size_t o = 0; o < c.outputs.size(); ++o) {
    Tensor const& t = c.outputs[o];
    size_t const n = size_t(volumeOf(t.dims));
    if (t.file == "nan") {
      size_t nonNan = 0;
      for (size_t i = 0; i < n; ++i) nonNan += !std::isnan(elementAsFloat(got[o], i, t.type));
      HCHECK(nonNan == 0, label << ": output " << o << " must be all NaN (overflow poison), " << nonNan << " of " << n
                                << " are not");
      std::printf("    %s output %zu: all %zu values NaN as expected\n", label, o, n);
      continue;
    }
    // The reference is float32 (the fp32 oracle, not rounded to T).
    std::vector<char> const want = readFile(c.dir + "/" + t.file);
    HCHECK(want.size() == n * 4, label << ": reference file of output " << o << " has " << want.size()
                                       << " bytes, expected " << n << " float32 values");
    double maxErr = 0;
    size_t worst = 0, nan = 0;
    for (size_t i = 0; i < n; ++i) {
      float const g = elementAsFloat(got[o], i, t.type), w = elementAsFloat(want, i, DataType::kFLOAT);
      // NaN passes only where the fp32 reference is NaN too (OPS.md: NaN in attended data
      // propagates, e.g. a cache row passed through); anywhere else it is a failure.
      if (std::isnan(g) != std::isnan(w)) ++nan;
      if (std::isnan(g) || std::isnan(w)) continue;
      double const e = std::fabs(double(g) - double(w));
      if (e > maxErr) { maxErr = e; worst = i; }
    }
    HCHECK(nan == 0, label << ": output " << o << " has " << nan << " NaN values where the reference has none, or"
                           << " numbers where it has NaN (of " << n << ")");
    std::printf("    %s output %zu %s: max |err| %.3g (atol %.3g)\n", label, o, str(t.dims).c_str(), maxErr, t.atol);
    HCHECK(maxErr <= t.atol, label << ": output " << o << " max error " << maxErr << " at flat index " << worst
                                   << " exceeds atol " << t.atol << " (got " << elementAsFloat(got[o], worst, t.type)
                                   << ", want " << elementAsFloat(want, worst, DataType::kFLOAT) << ")");
  }
}

bool gBuildOnly = false;  // --build-only: stop before the GPU (attach/enqueue); no data files needed

void runCase(Library const& lib, std::string const& dir) {
  Case c = readCase(dir);
  std::printf("case %s (%s)\n", dir.c_str(), c.op.c_str());
  IPluginCreatorV3One* creator = lib.creator(c.op);
  int32_t const nbIn = int32_t(c.inputs.size()), nbOut = int32_t(c.outputs.size());

  PluginPtr first(creator->createPlugin("node", c.fields.get(), TensorRTPhase::kBUILD));
  HCHECK(first.p != nullptr, "createPlugin(kBUILD) returned null: " << gLogger.last);
  PluginPtr plugin(first.p->clone());
  HCHECK(plugin.p != nullptr, "clone returned null");
  IPluginV3OneCore* core = plugin.core();
  HCHECK(c.op == core->getPluginName() && std::string("1") == core->getPluginVersion() &&
             std::string("dsattn") == core->getPluginNamespace(),
         "core capability names " << core->getPluginName() << "/" << core->getPluginVersion() << "/"
                                  << core->getPluginNamespace());
  IPluginV3OneBuildV2* build = plugin.build();
  HCHECK(build->getNbOutputs() == nbOut, "getNbOutputs " << build->getNbOutputs() << " != " << nbOut);

  // getOutputDataTypes
  std::vector<DataType> inTypes(nbIn), outTypes(nbOut);
  for (int32_t i = 0; i < nbIn; ++i) inTypes[i] = c.inputs[i].absent ? DataType::kFLOAT : c.inputs[i].type;
  HCHECK(build->getOutputDataTypes(outTypes.data(), nbOut, inTypes.data(), nbIn) == 0, "getOutputDataTypes failed");
  for (int32_t o = 0; o < nbOut; ++o) HCHECK(outTypes[o] == c.outputs[o].type, "output " << o << " type mismatch");

  // getOutputShapes: all-constant dims, then all-symbolic dims (what a dynamic profile gives).
  for (bool symbolic : {false, true}) {
    ExprBuilder eb;
    std::vector<DimsExprs> in(nbIn), out(nbOut);
    for (int32_t i = 0; i < nbIn; ++i) {
      in[i].nbDims = c.inputs[i].absent ? 0 : c.inputs[i].dims.nbDims;
      for (int32_t a = 0; a < in[i].nbDims; ++a) in[i].d[a] = eb.make(c.inputs[i].dims.d[a], !symbolic);
    }
    HCHECK(build->getOutputShapes(in.data(), nbIn, nullptr, 0, out.data(), nbOut, eb) == 0,
           "getOutputShapes failed (" << (symbolic ? "symbolic" : "constant") << " dims)");
    for (int32_t o = 0; o < nbOut; ++o) {
      Dims d{};
      d.nbDims = out[o].nbDims;
      for (int32_t a = 0; a < d.nbDims; ++a) d.d[a] = ExprBuilder::eval(out[o].d[a]);
      HCHECK(d.nbDims == c.outputs[o].dims.nbDims && volumeOf(d) == volumeOf(c.outputs[o].dims) &&
                 str(d) == str(c.outputs[o].dims),
             "output " << o << " shape " << str(d) << " != expected " << str(c.outputs[o].dims));
    }
  }

  // supportsFormatCombination: TensorRT asks position by position with the earlier ones fixed.
  std::vector<DynamicPluginTensorDesc> io(nbIn + nbOut);
  auto fill = [&](bool dynamic) {
    for (int32_t k = 0; k < nbIn + nbOut; ++k) {
      Tensor const& t = k < nbIn ? c.inputs[k] : c.outputs[k - nbIn];
      DynamicPluginTensorDesc& d = io[k];
      d = DynamicPluginTensorDesc{};
      d.desc.type = t.absent ? DataType::kFLOAT : t.type;
      d.desc.format = TensorFormat::kLINEAR;
      d.desc.scale = -1.f;
      d.desc.dims = t.absent ? Dims{} : t.dims;
      d.min = d.opt = d.desc.dims;
      d.max = t.absent ? Dims{} : t.maxDims;
      if (k >= nbIn) {
        // Output max: the same dims as computed from max inputs is what TensorRT gives; the
        // checks only look at ranks and static dims, so the actual dims stand in.
        d.max = d.desc.dims;
      }
      if (dynamic)
        for (int32_t a = 0; a < d.desc.dims.nbDims; ++a) d.desc.dims.d[a] = -1;
    }
  };
  fill(false);
  int32_t accepted = 0, rejected = 0;
  for (int32_t pos = 0; pos < nbIn + nbOut; ++pos) {
    bool const absent = pos < nbIn && c.inputs[pos].absent;
    DataType const want = io[pos].desc.type;
    HCHECK(build->supportsFormatCombination(pos, io.data(), nbIn, nbOut), "position " << pos << " rejects its own type");
    ++accepted;
    if (!absent) {
      // Input 0 of every dsattn op is the free type T (float32/float16/bfloat16, OPS.md); every
      // later position is then determined: exactly its own type.
      for (DataType t : kALL_TYPES) {
        if (t == want) continue;
        bool const free = pos == 0 && (t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16);
        io[pos].desc.type = t;
        bool const acc = build->supportsFormatCombination(pos, io.data(), nbIn, nbOut);
        HCHECK(acc == free, "position " << pos << (acc ? " accepts" : " rejects") << " type " << int(t)
                                        << " (its own type is " << int(want) << ")");
        acc ? ++accepted : ++rejected;
      }
      io[pos].desc.type = want;
      io[pos].desc.format = TensorFormat::kCHW32;
      HCHECK(!build->supportsFormatCombination(pos, io.data(), nbIn, nbOut), "position " << pos << " accepts kCHW32");
      io[pos].desc.format = TensorFormat::kLINEAR;
      ++rejected;
    }
  }
  std::printf("    supportsFormatCombination: %d accepted, %d rejected as required\n", accepted, rejected);

  // configurePlugin: static dims, then every dim dynamic (-1) with min/opt/max given.
  std::vector<DynamicPluginTensorDesc> ins(io.begin(), io.begin() + nbIn), outs(io.begin() + nbIn, io.end());
  HCHECK(build->configurePlugin(ins.data(), nbIn, outs.data(), nbOut) == 0, "configurePlugin (static dims) failed");
  fill(true);
  ins.assign(io.begin(), io.begin() + nbIn);
  outs.assign(io.begin() + nbIn, io.end());
  HCHECK(build->configurePlugin(ins.data(), nbIn, outs.data(), nbOut) == 0, "configurePlugin (dynamic dims) failed");
  size_t const ws = build->getWorkspaceSize(ins.data(), nbIn, outs.data(), nbOut);
  std::printf("    getWorkspaceSize: %zu bytes\n", ws);
  for (int32_t o = 0; o < nbOut; ++o) {
    HCHECK(build->getAliasedInput(o) == c.alias[o], "getAliasedInput(" << o << ") = " << build->getAliasedInput(o)
                                                                       << ", expected " << c.alias[o]);
  }

  if (gBuildOnly) {
    // Build-time path only; still prove the serialized fields re-create an equivalent plugin.
    Fields ser = Fields::deepCopy(plugin.runtime()->getFieldsToSerialize());
    PluginPtr restored(creator->createPlugin("node", ser.get(), TensorRTPhase::kRUNTIME));
    HCHECK(restored.p != nullptr, "createPlugin(kRUNTIME) from getFieldsToSerialize returned null: " << gLogger.last);
    HCHECK(Fields::deepCopy(restored.runtime()->getFieldsToSerialize()) == ser, "re-serialized fields differ");
    std::printf("    build-only: %zu serialized fields re-create the plugin\n", ser.names.size());
    return;
  }
  std::vector<std::vector<char>> hostIn(nbIn);
  for (int32_t i = 0; i < nbIn; ++i) {
    if (c.inputs[i].absent) continue;
    hostIn[i] = readFile(c.dir + "/" + c.inputs[i].file);
    size_t const want = size_t(volumeOf(c.inputs[i].dims)) * typeSize(c.inputs[i].type);
    HCHECK(hostIn[i].size() == want, "input " << i << " file has " << hostIn[i].size() << " bytes, expected " << want);
  }

  // Run A: the build-time plugin attached to a context, separate present buffers (no aliasing).
  ResourceContext ctx;
  PluginPtr attached(plugin.runtime()->attachToContext(&ctx));
  HCHECK(attached.p != nullptr, "attachToContext returned null");
  int32_t status = 0;
  // Outputs start as NaN (0xFF bytes) in run A and as a finite pattern (0x3C bytes) in runs B and C:
  // an element the plugin never writes then differs bitwise between the runs, and the overflow
  // case's all-NaN context in run B can only come from the plugin.
  auto runA = enqueueOnce(attached.runtime(), c, hostIn, ws, /*aliased=*/false, &status, 0xFF);
  compareOutputs(c, runA, "run A (separate buffers)");
  if (c.checkStatus) {
    HCHECK((status != 0) == (c.expectStatusNonzero != 0), "status word " << status << ", expected "
                                                                         << (c.expectStatusNonzero ? "nonzero" : "0"));
    std::printf("    status word %d as expected\n", status);
  }

  // Serialize / deserialize through named fields only.
  Fields ser = Fields::deepCopy(attached.runtime()->getFieldsToSerialize());
  PluginPtr restored(creator->createPlugin("node", ser.get(), TensorRTPhase::kRUNTIME));
  HCHECK(restored.p != nullptr, "createPlugin(kRUNTIME) from getFieldsToSerialize returned null: " << gLogger.last);
  Fields ser2 = Fields::deepCopy(restored.runtime()->getFieldsToSerialize());
  HCHECK(ser == ser2, "fields serialized after re-creation differ from the first serialization");
  PluginPtr restoredAttached(restored.runtime()->attachToContext(&ctx));
  HCHECK(restoredAttached.p != nullptr, "attachToContext (runtime plugin) returned null");
  bool const anyAlias = std::any_of(c.alias.begin(), c.alias.end(), [](int32_t a) { return a >= 0; });
  int32_t statusB = 0;
  auto runB = enqueueOnce(restoredAttached.runtime(), c, hostIn, ws, /*aliased=*/anyAlias, &statusB, 0x3C);
  compareOutputs(c, runB, "run B (deserialized)");
  if (c.checkStatus) {
    HCHECK((statusB != 0) == (c.expectStatusNonzero != 0), "run B status word " << statusB);
  }
  for (int32_t o = 0; o < nbOut; ++o) {
    HCHECK(runA[o] == runB[o], "output " << o << " of the deserialized plugin" << (anyAlias ? " (aliased buffers)" : "")
                                         << " differs bitwise from the first run");
  }
  std::printf("    run B (deserialized from %zu fields%s): bitwise identical\n", ser.names.size(),
              anyAlias ? ", aliased present buffers" : "");
  // Run C: the deserialized, attached plugin's enqueue captured into a CUDA graph and replayed.
  auto runC = enqueueOnce(restoredAttached.runtime(), c, hostIn, ws, /*aliased=*/anyAlias, nullptr, 0x3C,
                          /*graph=*/true);
  for (int32_t o = 0; o < nbOut; ++o) {
    HCHECK(runA[o] == runC[o], "output " << o << " of the CUDA-graph replay differs bitwise from the first run");
  }
  std::printf("    run C (enqueue captured in a CUDA graph, replayed): bitwise identical\n");
}

// ---- selftest (CPU only) -------------------------------------------------------------------------------------

int gSelfFailures = 0;
int gSelfChecks = 0;

void expectNull(IPluginCreatorV3One* cr, PluginFieldCollection const* fc, char const* what) {
  ++gSelfChecks;
  int const before = gLogger.errors;
  IPluginV3* p = cr->createPlugin("bad", fc, TensorRTPhase::kBUILD);
  bool const ok = p == nullptr && gLogger.errors > before;
  if (!ok) {
    ++gSelfFailures;
    std::printf("  FAIL %s %s: %s\n", cr->getPluginName(), what,
                p ? "createPlugin returned a plugin" : "returned null without logging an error");
  }
  delete p;
}

IPluginV3* expectPlugin(IPluginCreatorV3One* cr, PluginFieldCollection const* fc, char const* what) {
  ++gSelfChecks;
  IPluginV3* p = cr->createPlugin("good", fc, TensorRTPhase::kBUILD);
  if (p == nullptr) {
    ++gSelfFailures;
    std::printf("  FAIL %s %s: createPlugin returned null (%s)\n", cr->getPluginName(), what, gLogger.last.c_str());
  }
  return p;
}

void expectTrue(bool cond, char const* op, std::string const& what) {
  ++gSelfChecks;
  if (!cond) {
    ++gSelfFailures;
    std::printf("  FAIL %s %s\n", op, what.c_str());
  }
}

Fields validFields(std::string const& op) {
  Fields f;
  if (op == "SoftmaxContext") {
    f.addInt("num_heads", 4);
    f.addInt("head_size", 64);
  }
  return f;
}

// Malformed field collections: every one must give nullptr and a logged error, never a crash.
void selftestFields(Library const& lib) {
  for (IPluginCreatorV3One* cr : lib.creators) {
    std::string const op = cr->getPluginName();
    std::printf("selftest fields: %s\n", op.c_str());
    {
      Fields f = validFields(op);
      delete expectPlugin(cr, f.get(), "valid fields");
      f.addString("plugin_version", "1");
      f.addString("plugin_namespace", "dsattn");
      delete expectPlugin(cr, f.get(), "valid fields + plugin_version/plugin_namespace strings");
    }
    {
      // A hand-built STRING field without the trailing NUL counted is accepted too.
      Fields f = validFields(op);
      f.addRaw("plugin_namespace", PluginFieldType::kCHAR, "dsattn", 6, 6);
      delete expectPlugin(cr, f.get(), "plugin_namespace without NUL in its length");
    }
    expectNull(cr, nullptr, "null collection");
    {
      PluginFieldCollection fc{};
      fc.nbFields = 0;
      fc.fields = nullptr;
      if (op == "SoftmaxContext") expectNull(cr, &fc, "empty collection (required num_heads/head_size missing)");
      else delete expectPlugin(cr, &fc, "empty collection (all defaults)");
    }
    {
      Fields f = validFields(op);
      PluginFieldCollection fc = *f.get();
      fc.nbFields = 1 << 30;  // huge count over a short array: must be rejected before reading
      expectNull(cr, &fc, "nbFields = 2^30");
      fc.nbFields = -1;
      expectNull(cr, &fc, "nbFields = -1");
      fc.nbFields = 2;
      fc.fields = nullptr;
      expectNull(cr, &fc, "fields = nullptr with nbFields = 2");
    }
    {
      Fields f = validFields(op);
      f.addInt("no_such_attribute", 1);
      expectNull(cr, f.get(), "unknown field");
    }
    {
      Fields f = validFields(op);
      PluginField bad(nullptr, nullptr, PluginFieldType::kINT32, 1);
      std::vector<PluginField> v(f.get()->fields, f.get()->fields + f.get()->nbFields);
      v.push_back(bad);
      PluginFieldCollection fc{int32_t(v.size()), v.data()};
      expectNull(cr, &fc, "field with a null name");
    }
    for (auto const& [name, value, what] :
         std::vector<std::tuple<std::string, std::string, std::string>>{{"plugin_version", "2", "plugin_version 2"},
                                                                         {"plugin_namespace", "other", "namespace other"}}) {
      Fields f = validFields(op);
      f.addString(name, value);
      expectNull(cr, f.get(), what.c_str());
    }
    {
      Fields f = validFields(op);
      f.addInt("plugin_version", 1);
      expectNull(cr, f.get(), "plugin_version as kINT32");
    }
    // Generic per-field malformations, driven by the creator's own getFieldNames().
    PluginFieldCollection const* names = cr->getFieldNames();
    expectTrue(names != nullptr && names->nbFields > 0, op.c_str(), "getFieldNames is empty");
    for (int32_t k = 0; names && k < names->nbFields; ++k) {
      PluginField const& spec = names->fields[k];
      std::string const n = spec.name;
      bool const isList = spec.length == 0;  // FLOATS
      auto base = [&]() {
        Fields f = validFields(op);
        // drop an existing valid entry of the same name (duplicates are tested separately)
        for (size_t i = 0; i < f.names.size(); ++i)
          if (f.names[i] == n) {
            f.names.erase(f.names.begin() + i); f.data.erase(f.data.begin() + i);
            f.types.erase(f.types.begin() + i); f.lengths.erase(f.lengths.begin() + i);
            break;
          }
        return f;
      };
      int32_t const one = 1;
      float const onef = 1.f;
      {
        Fields f = base();
        if (spec.type == PluginFieldType::kINT32) f.addRaw(n, PluginFieldType::kFLOAT32, &onef, 4, 1);
        else f.addRaw(n, PluginFieldType::kINT32, &one, 4, 1);
        expectNull(cr, f.get(), (n + ": wrong field type").c_str());
      }
      {
        Fields f = base();
        int64_t const big = 1;
        f.addRaw(n, spec.type == PluginFieldType::kINT32 ? PluginFieldType::kINT64 : PluginFieldType::kFLOAT64, &big, 8, 1);
        expectNull(cr, f.get(), (n + ": 64-bit field type").c_str());
      }
      {
        Fields f = base();
        f.addRaw(n, spec.type, nullptr, 0, -1);
        expectNull(cr, f.get(), (n + ": length -1").c_str());
      }
      {
        Fields f = base();
        f.addRaw(n, spec.type, nullptr, 0, 1);  // length 1, data nullptr
        expectNull(cr, f.get(), (n + ": nullptr data").c_str());
      }
      if (!isList) {
        Fields f = base();
        int32_t const two[2] = {1, 1};
        f.addRaw(n, spec.type, two, 8, 2);
        expectNull(cr, f.get(), (n + ": 2 values for a scalar").c_str());
        Fields g = base();
        g.addRaw(n, spec.type, nullptr, 0, 0);
        expectNull(cr, g.get(), (n + ": 0 values for a scalar").c_str());
      } else {
        Fields f = base();
        float const x = 0.5f;
        f.addRaw(n, spec.type, &x, 4, 1 << 30);  // huge count over a 1-element buffer
        expectNull(cr, f.get(), (n + ": 2^30 values").c_str());
      }
      {
        Fields f = validFields(op);
        if (spec.type == PluginFieldType::kINT32) { f.addInt(n, 0); f.addInt(n, 0); }
        else { f.addFloat(n, 0.5f); f.addFloat(n, 0.5f); }
        expectNull(cr, f.get(), (n + ": given twice").c_str());
      }
    }
  }
  // Out-of-range values and inconsistent attribute combinations, per op.
  struct Bad { char const* op; std::function<void(Fields&)> add; char const* what; };
  float const nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<Bad> bad = {
      {"QKVGemm", [](Fields& f) { f.addInt("norm_type", 3); }, "norm_type 3"},
      {"QKVGemm", [](Fields& f) { f.addInt("norm_type", -1); }, "norm_type -1"},
      {"QKVGemm", [](Fields& f) { f.addInt("quantized", 2); }, "quantized 2"},
      {"QKVGemm", [](Fields& f) { f.addInt("emit_normed", -1); }, "emit_normed -1"},
      {"QKVGemm", [&](Fields& f) { f.addFloat("epsilon", nan); }, "epsilon NaN"},
      {"QKVGemm", [&](Fields& f) { f.addFloat("epsilon", inf); }, "epsilon inf"},
      {"QKVGemm", [](Fields& f) { f.addFloat("epsilon", -1e-5f); }, "epsilon < 0"},
      {"QKVGemm", [](Fields& f) { f.addInt("group_size", 64); }, "group_size with quantized=0"},
      {"QKVGemm", [](Fields& f) { f.addInt("quantized", 1); f.addInt("group_size", 8); }, "group_size 8 (not x16)"},
      {"Int8MatMul", [](Fields& f) { f.addInt("group_size", -16); }, "group_size -16"},
      {"Int8MatMul", [](Fields& f) { f.addInt("group_size", 24); }, "group_size 24 (not x16)"},
      {"SoftmaxContext", [](Fields& f) { f.addInt("num_kv_heads", 3); }, "num_kv_heads 3 with num_heads 4"},
      {"SoftmaxContext", [](Fields& f) { f.addInt("num_kv_heads", 0); }, "num_kv_heads 0"},
      {"SoftmaxContext", [](Fields& f) { f.addInt("qkv_layout", 2); }, "qkv_layout 2"},
      {"SoftmaxContext", [](Fields& f) { f.addInt("qkv_layout", 1); f.addInt("num_kv_heads", 2); }, "qkv_layout 1 with GQA"},
      {"SoftmaxContext", [](Fields& f) { f.addInt("causal", 2); }, "causal 2"},
      {"SoftmaxContext", [](Fields& f) { f.addInt("local_window", -1); }, "local_window -1"},
      {"SoftmaxContext", [](Fields& f) { f.addInt("rotary_dim", 3); }, "rotary_dim odd"},
      {"SoftmaxContext", [](Fields& f) { f.addInt("rotary_dim", 66); }, "rotary_dim > head_size"},
      {"SoftmaxContext", [](Fields& f) { f.addInt("rotary_style", 2); }, "rotary_style 2"},
      {"SoftmaxContext", [](Fields& f) { f.addInt("rotary_dim", 32); f.addFloat("rope_theta", 0.f); }, "rope_theta 0"},
      {"SoftmaxContext", [&](Fields& f) { f.addFloat("scale", nan); }, "scale NaN"},
      {"SoftmaxContext", [](Fields& f) { f.addFloats("alibi_slopes", {0.5f, 0.25f, 0.125f}); }, "3 alibi slopes for 4 heads"},
      {"SoftmaxContext", [&](Fields& f) { f.addFloats("alibi_slopes", {0.5f, nan, 0.125f, 0.1f}); }, "alibi slope NaN"},
  };
  for (auto const& b : bad) {
    Fields f = validFields(b.op);
    b.add(f);
    expectNull(lib.creator(b.op), f.get(), b.what);
  }
  for (auto const& [H, D, what] : std::vector<std::tuple<int, int, char const*>>{
           {0, 64, "num_heads 0"}, {4, 0, "head_size 0"}, {4, 12, "head_size 12 (kernels: multiple of 8)"},
           {4, 512, "head_size 512 (kernels: at most 256)"}}) {
    Fields f;
    f.addInt("num_heads", H);
    f.addInt("head_size", D);
    expectNull(lib.creator("SoftmaxContext"), f.get(), what);
  }
  {
    Fields f;
    f.addInt("num_heads", 4);
    expectNull(lib.creator("SoftmaxContext"), f.get(), "head_size missing");
  }
}

// Shape / type negotiation errors on valid plugins (no GPU: build-time calls only).
void selftestShapes(Library const& lib) {
  std::printf("selftest shapes\n");
  auto dims = [](std::initializer_list<int64_t> v) {
    Dims d{};
    d.nbDims = int32_t(v.size());
    int i = 0;
    for (int64_t x : v) d.d[i++] = x;
    return d;
  };
  struct T { Dims d; DataType t; };
  // Runs getOutputShapes + configurePlugin on the given tensors; returns whether both succeeded.
  auto negotiate = [&](IPluginV3* p, std::vector<T> const& in, std::vector<T> const& out) {
    PluginPtr holder(p->clone());
    IPluginV3OneBuildV2* b = holder.build();
    ExprBuilder eb;
    std::vector<DimsExprs> ie(in.size()), oe(out.size());
    for (size_t i = 0; i < in.size(); ++i) {
      ie[i].nbDims = in[i].d.nbDims;
      for (int32_t a = 0; a < in[i].d.nbDims; ++a) ie[i].d[a] = eb.make(in[i].d.d[a], true);
    }
    if (b->getOutputShapes(ie.data(), int32_t(in.size()), nullptr, 0, oe.data(), int32_t(out.size()), eb) != 0) return false;
    std::vector<DynamicPluginTensorDesc> id(in.size()), od(out.size());
    for (size_t i = 0; i < in.size(); ++i) {
      id[i].desc.dims = id[i].min = id[i].max = id[i].opt = in[i].d;
      id[i].desc.type = in[i].t;
      id[i].desc.format = TensorFormat::kLINEAR;
    }
    for (size_t i = 0; i < out.size(); ++i) {
      od[i].desc.dims = od[i].min = od[i].max = od[i].opt = out[i].d;
      od[i].desc.type = out[i].t;
      od[i].desc.format = TensorFormat::kLINEAR;
    }
    return b->configurePlugin(id.data(), int32_t(in.size()), od.data(), int32_t(out.size())) == 0;
  };
  auto const F16 = DataType::kHALF, F32 = DataType::kFLOAT, I32 = DataType::kINT32, I8 = DataType::kINT8;
  {
    Fields f;
    f.addInt("num_heads", 4);
    f.addInt("head_size", 64);
    f.addInt("num_kv_heads", 2);
    PluginPtr p(lib.creator("SoftmaxContext")->createPlugin("s", f.get(), TensorRTPhase::kBUILD));
    expectTrue(p.p != nullptr, "SoftmaxContext", "valid GQA plugin");
    if (p.p) {
      std::vector<T> good = {{dims({2, 3, 512}), F16}, {dims({2, 2, 32, 64}), F16}, {dims({2, 2, 32, 64}), F16}, {dims({2}), I32}};
      std::vector<T> outs = {{dims({2, 3, 256}), F16}, {dims({2, 2, 32, 64}), F16}, {dims({2, 2, 32, 64}), F16}};
      expectTrue(negotiate(p.p, good, outs), "SoftmaxContext", "valid shapes accepted");
      int const e0 = gLogger.errors;
      auto bad = good; bad[0].d = dims({2, 3, 500});
      expectTrue(!negotiate(p.p, bad, outs), "SoftmaxContext", "qkv width 500 rejected");
      bad = good; bad[1].d = dims({2, 4, 32, 64});
      expectTrue(!negotiate(p.p, bad, outs), "SoftmaxContext", "past_key with 4 heads rejected");
      bad = good; bad[2].d = dims({2, 2, 16, 64});
      expectTrue(!negotiate(p.p, bad, outs), "SoftmaxContext", "past_value Tmax != past_key Tmax rejected");
      bad = good; bad[3].t = DataType::kINT64;
      expectTrue(!negotiate(p.p, bad, outs), "SoftmaxContext", "int64 seq_lens rejected");
      bad = good; bad[1].t = F32;
      expectTrue(!negotiate(p.p, bad, outs), "SoftmaxContext", "mixed T rejected");
      bad = good; bad.resize(3);
      expectTrue(!negotiate(p.p, bad, outs), "SoftmaxContext", "3 inputs rejected");
      bad = good; bad[0].d = dims({2, 512});
      expectTrue(!negotiate(p.p, bad, outs), "SoftmaxContext", "rank-2 qkv rejected");
      expectTrue(gLogger.errors > e0, "SoftmaxContext", "shape errors are logged");
    }
  }
  {
    Fields f;
    f.addInt("norm_type", 2);
    PluginPtr p(lib.creator("QKVGemm")->createPlugin("q", f.get(), TensorRTPhase::kBUILD));
    expectTrue(p.p != nullptr, "QKVGemm", "valid RMSNorm plugin");
    if (p.p) {
      Dims const none{};
      std::vector<T> good = {{dims({1, 5, 64}), F16}, {dims({64, 96}), F16}, {none, F32}, {dims({64}), F16}};
      std::vector<T> outs = {{dims({1, 5, 96}), F16}};
      expectTrue(negotiate(p.p, good, outs), "QKVGemm", "RMSNorm with absent bias (nbDims 0) accepted");
      auto bad = good; bad.resize(2);
      expectTrue(!negotiate(p.p, bad, outs), "QKVGemm", "RMSNorm without gamma rejected");
      bad = good; bad[1].d = dims({32, 96});
      expectTrue(!negotiate(p.p, bad, outs), "QKVGemm", "weight hidden mismatch rejected");
      bad = good; bad.push_back({dims({64}), F16});
      expectTrue(!negotiate(p.p, bad, outs), "QKVGemm", "beta with RMSNorm rejected");
      bad = good; bad[1].t = I8;
      expectTrue(!negotiate(p.p, bad, outs), "QKVGemm", "int8 weight with quantized=0 rejected");
      bad = good; bad[2] = {dims({95}), F16};
      expectTrue(!negotiate(p.p, bad, outs), "QKVGemm", "bias [95] for N=96 rejected");
    }
  }
  {
    Fields f;
    f.addInt("group_size", 32);
    PluginPtr p(lib.creator("Int8MatMul")->createPlugin("i", f.get(), TensorRTPhase::kBUILD));
    expectTrue(p.p != nullptr, "Int8MatMul", "valid grouped plugin");
    if (p.p) {
      std::vector<T> good = {{dims({3, 7, 64}), F16}, {dims({48, 64}), I8}, {dims({48, 2}), F32}};
      std::vector<T> outs = {{dims({3, 7, 48}), F16}};
      expectTrue(negotiate(p.p, good, outs), "Int8MatMul", "valid shapes accepted");
      auto bad = good; bad[2].d = dims({48, 1});
      expectTrue(!negotiate(p.p, bad, outs), "Int8MatMul", "scale groups mismatch rejected");
      bad = good; bad[0].d = dims({3, 7, 48}); bad[1].d = dims({48, 48}); bad[2].d = dims({48, 1});
      expectTrue(!negotiate(p.p, bad, outs), "Int8MatMul", "group_size 32 not dividing K=48 rejected");
      bad = good; bad[2].t = F16;
      expectTrue(!negotiate(p.p, bad, outs), "Int8MatMul", "fp16 weight_scale rejected");
      // getOutputDataTypes with an int32 input
      DataType in[3] = {I32, I8, F32}, outT[1];
      expectTrue(p.build()->getOutputDataTypes(outT, 1, in, 3) != 0, "Int8MatMul", "int32 input type rejected");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<std::string> args(argv + 1, argv + argc);
    bool selftest = false, fieldsOnly = false;
    std::vector<std::string> rest;
    for (auto const& a : args) {
      if (a == "--selftest") selftest = true;
      else if (a == "--verbose") gLogger.verbose = true;
      else if (a == "--build-only") gBuildOnly = true;
      else if (a == "--fields") fieldsOnly = true;
      else rest.push_back(a);
    }
    if (rest.empty()) {
      std::fprintf(stderr, "usage: %s [--verbose] --selftest LIB | --fields LIB | [--build-only] LIB CASE_DIR...\n",
                   argv[0]);
      return 2;
    }
    Library lib(rest[0]);
    if (fieldsOnly) {  // what the ONNX parser reads: getFieldNames of every creator
      for (IPluginCreatorV3One* c : lib.creators) {
        PluginFieldCollection const* f = c->getFieldNames();
        for (int32_t i = 0; f && i < f->nbFields; ++i)
          std::printf("field %s %s %d %d\n", c->getPluginName(), f->fields[i].name, int(f->fields[i].type),
                      f->fields[i].length);
      }
      return 0;
    }
    if (selftest) {
      selftestFields(lib);
      selftestShapes(lib);
      std::printf("selftest: %d checks, %d failures\n", gSelfChecks, gSelfFailures);
      return gSelfFailures ? 1 : 0;
    }
    int failures = 0;
    for (size_t i = 1; i < rest.size(); ++i) {
      try {
        runCase(lib, rest[i]);
        std::printf("PASS %s\n", rest[i].c_str());
      } catch (std::exception const& e) {
        ++failures;
        std::printf("FAIL %s: %s\n", rest[i].c_str(), e.what());
      }
    }
    std::printf("harness: %zu cases, %d failures\n", rest.size() - 1, failures);
    return failures ? 1 : 0;
  } catch (std::exception const& e) {
    std::fprintf(stderr, "harness: %s\n", e.what());
    return 2;
  }
}
