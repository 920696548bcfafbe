# Header-only libraries for the Hopper paths: FlashInfer (its FA3-style sm90 prefill), the CUTLASS /
# CuTe it is written against (also used for the mixed-input int8 GEMM) and the CCCL it needs ahead of
# the CUDA toolkit's. All three come from one pinned wheel, flashinfer-python, whose flashinfer/data
# folder holds them; nothing is vendored into this repository.
#
# Where the headers come from, first match wins:
#   1. -DDSATTN_FLASHINFER_DATA=/path/to/flashinfer/data   (an unpacked wheel, or a machine without
#      network access that was handed the folder);
#   2. an installed flashinfer-python of exactly the pinned version (its package folder);
#   3. the download cache DSATTN_DEPS_DIR (default: the repository's ignored .deps/), filled on first
#      configure by `pip download --no-deps` of the pinned wheel, checked against its SHA-256.
# Sets DSATTN_FLASHINFER_DATA to the data folder, or to "" when none is available.
set(DSATTN_FLASHINFER_VERSION "0.7.4")
set(DSATTN_FLASHINFER_WHEEL "flashinfer_python-${DSATTN_FLASHINFER_VERSION}-py3-none-any.whl")
set(DSATTN_FLASHINFER_SHA256 "a051a62e09a2738e8b0de47a1944fd2f0f3eff01b728b662141ea660cb09dd32")
set(DSATTN_FLASHINFER_DATA "" CACHE PATH
    "flashinfer/data folder of flashinfer-python ${DSATTN_FLASHINFER_VERSION} (include/, cutlass/, cccl/)")
get_filename_component(_dsattn_repo "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
set(DSATTN_DEPS_DIR "${_dsattn_repo}/.deps" CACHE PATH "Download cache for the header-only dependencies")
option(DSATTN_FETCH_HEADERS "Download the pinned flashinfer-python wheel with pip when its headers are not found" ON)

function(_dsattn_flashinfer_ok dir out)
  if(dir AND EXISTS "${dir}/include/flashinfer/attention/hopper/prefill_sm90.cuh"
     AND EXISTS "${dir}/cutlass/include/cute/tensor.hpp"
     AND EXISTS "${dir}/cccl/libcudacxx/include/cuda/std/version")
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()

set(_fi_data "${DSATTN_FLASHINFER_DATA}")
_dsattn_flashinfer_ok("${_fi_data}" _fi_ok)
if(DSATTN_FLASHINFER_DATA AND NOT _fi_ok)
  message(FATAL_ERROR "dsattn: DSATTN_FLASHINFER_DATA='${DSATTN_FLASHINFER_DATA}' does not hold "
                      "include/flashinfer, cutlass/include and cccl/ of flashinfer-python ${DSATTN_FLASHINFER_VERSION}")
endif()

find_package(Python3 COMPONENTS Interpreter QUIET)
if(NOT _fi_ok AND Python3_Interpreter_FOUND)
  # find_spec locates the package without importing it (importing flashinfer needs torch and more).
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -c
      "import importlib.util as u, importlib.metadata as m\ns = u.find_spec('flashinfer')\nprint(s.submodule_search_locations[0] + '/data' if s and m.version('flashinfer-python') == '${DSATTN_FLASHINFER_VERSION}' else '')"
    OUTPUT_VARIABLE _fi_installed OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _rc)
  _dsattn_flashinfer_ok("${_fi_installed}" _fi_ok)
  if(_fi_ok)
    set(_fi_data "${_fi_installed}")
  endif()
endif()

set(_fi_cache "${DSATTN_DEPS_DIR}/flashinfer-python-${DSATTN_FLASHINFER_VERSION}")
if(NOT _fi_ok)
  _dsattn_flashinfer_ok("${_fi_cache}/flashinfer/data" _fi_ok)
  if(_fi_ok)
    set(_fi_data "${_fi_cache}/flashinfer/data")
  endif()
endif()

if(NOT _fi_ok AND DSATTN_FETCH_HEADERS AND Python3_Interpreter_FOUND)
  message(STATUS "dsattn: fetching ${DSATTN_FLASHINFER_WHEEL} (headers only are kept) into ${_fi_cache}")
  set(_whl_dir "${_fi_cache}/wheel")
  file(MAKE_DIRECTORY "${_whl_dir}")
  if(NOT EXISTS "${_whl_dir}/${DSATTN_FLASHINFER_WHEEL}")
    execute_process(
      COMMAND "${Python3_EXECUTABLE}" -m pip download -q --no-deps --only-binary=:all:
              "flashinfer-python==${DSATTN_FLASHINFER_VERSION}" -d "${_whl_dir}"
      RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
    if(NOT _rc EQUAL 0)
      message(WARNING "dsattn: pip download of flashinfer-python==${DSATTN_FLASHINFER_VERSION} failed: ${_err}")
    endif()
  endif()
  if(EXISTS "${_whl_dir}/${DSATTN_FLASHINFER_WHEEL}")
    file(SHA256 "${_whl_dir}/${DSATTN_FLASHINFER_WHEEL}" _sha)
    if(NOT _sha STREQUAL DSATTN_FLASHINFER_SHA256)
      file(REMOVE "${_whl_dir}/${DSATTN_FLASHINFER_WHEEL}")
      message(FATAL_ERROR "dsattn: ${DSATTN_FLASHINFER_WHEEL} has SHA-256 ${_sha}, expected ${DSATTN_FLASHINFER_SHA256}")
    endif()
    file(ARCHIVE_EXTRACT INPUT "${_whl_dir}/${DSATTN_FLASHINFER_WHEEL}" DESTINATION "${_fi_cache}"
         PATTERNS "flashinfer/data/include/*" "flashinfer/data/cutlass/include/*"
                  "flashinfer/data/cutlass/tools/util/include/*" "flashinfer/data/cccl/*")
    # The headers are all that is needed; the 100 MB wheel is not kept.
    file(REMOVE "${_whl_dir}/${DSATTN_FLASHINFER_WHEEL}")
    _dsattn_flashinfer_ok("${_fi_cache}/flashinfer/data" _fi_ok)
    if(_fi_ok)
      set(_fi_data "${_fi_cache}/flashinfer/data")
    endif()
  endif()
endif()

if(_fi_ok)
  set(DSATTN_FLASHINFER_DATA "${_fi_data}")
  message(STATUS "dsattn: FlashInfer ${DSATTN_FLASHINFER_VERSION} / CUTLASS / CCCL headers: ${_fi_data}")
else()
  set(DSATTN_FLASHINFER_DATA "")
endif()
