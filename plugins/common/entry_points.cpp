// The two symbols the library exports (linker version script dsattn_plugins.map): TensorRT's
// IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, --setPluginsToSerialize, the Python
// registry.load_library) calls setLoggerFinder, then getCreators, and registers each creator under
// its own namespace ("dsattn"). There is deliberately no static REGISTER_TENSORRT_PLUGIN: loadLibrary
// refuses a library whose creators are already registered, so self-registration at dlopen time
// would break the loadLibrary path (see plugins/README in the op folders and peers.md §2.4).
#include "plugin_common.h"

#define DSATTN_EXPORT extern "C" __attribute__((visibility("default")))

DSATTN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  dsattn::plugin::setLoggerFinder(finder);
}

DSATTN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  // Function-local statics: constructed on first call, thread-safe, alive until unload.
  static nvinfer1::IPluginCreatorInterface* const kCreators[] = {
      dsattn::plugin::qkvGemmCreator(),
      dsattn::plugin::softmaxContextCreator(),
      dsattn::plugin::int8MatMulCreator(),
  };
  nbCreators = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
  return kCreators;
}
