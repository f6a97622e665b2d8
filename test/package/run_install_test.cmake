# Package test driver, run as: cmake -DMODE=install|subdir -D... -P run_install_test.cmake
#
#   MODE                install: `cmake --install` the outer build into WORK_DIR/prefix, then
#                       build test/package/consumer against it with find_package(sinkmoe).
#                       subdir: build test/package/subdir_consumer, which add_subdirectory()s
#                       the repository.
#   SINKMOE_SOURCE_DIR  repository root
#   SINKMOE_BINARY_DIR  the outer build tree (MODE=install)
#   WORK_DIR            scratch folder (wiped first)
#   GENERATOR           CMake generator for the consumer build
#   MAKE_PROGRAM        optional: the generator's build tool
#   CXX_COMPILER        C++ compiler for the consumer build (default g++)
#
# Fails (non-zero exit) if any step fails or the program does not print the version.
cmake_minimum_required(VERSION 3.25)

foreach(var MODE SINKMOE_SOURCE_DIR WORK_DIR GENERATOR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_install_test.cmake: ${var} is not set")
  endif()
endforeach()
if(NOT CXX_COMPILER)
  set(CXX_COMPILER g++)
endif()

# Expected version, read from the project() call (single source of truth).
file(STRINGS "${SINKMOE_SOURCE_DIR}/CMakeLists.txt" _project_line REGEX "^project\\(sinkmoe VERSION")
string(REGEX MATCH "VERSION ([0-9]+\\.[0-9]+\\.[0-9]+)" _m "${_project_line}")
set(expected_version "${CMAKE_MATCH_1}")
if(NOT expected_version)
  message(FATAL_ERROR "could not read the project version from ${SINKMOE_SOURCE_DIR}/CMakeLists.txt")
endif()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(gen_args -G "${GENERATOR}")
if(MAKE_PROGRAM)
  list(APPEND gen_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()

function(run_step what)
  message(STATUS "[${MODE}] ${what}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[${MODE}] ${what} failed (${rc})")
  endif()
endfunction()

set(build_dir "${WORK_DIR}/build")
if(MODE STREQUAL "install")
  if(NOT SINKMOE_BINARY_DIR)
    message(FATAL_ERROR "run_install_test.cmake: SINKMOE_BINARY_DIR is not set")
  endif()
  set(prefix "${WORK_DIR}/prefix")
  run_step("install" "${CMAKE_COMMAND}" --install "${SINKMOE_BINARY_DIR}" --prefix "${prefix}")
  foreach(f include/sinkmoe/sinkmoe.hpp lib/cmake/sinkmoe/sinkmoeConfig.cmake
            lib/cmake/sinkmoe/sinkmoeConfigVersion.cmake lib/cmake/sinkmoe/sinkmoeTargets.cmake)
    if(NOT EXISTS "${prefix}/${f}")
      message(FATAL_ERROR "[install] ${f} missing from the install tree")
    endif()
  endforeach()
  run_step("configure" "${CMAKE_COMMAND}" ${gen_args}
    -S "${SINKMOE_SOURCE_DIR}/test/package/consumer" -B "${build_dir}"
    "-DCMAKE_PREFIX_PATH=${prefix}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
  # The package must come from the install tree, not from the build tree or a registry.
  file(STRINGS "${build_dir}/CMakeCache.txt" _dir_line REGEX "^sinkmoe_DIR:")
  string(REGEX REPLACE "^sinkmoe_DIR:[A-Z]+=" "" _sinkmoe_dir "${_dir_line}")
  file(REAL_PATH "${_sinkmoe_dir}" _sinkmoe_dir)
  file(REAL_PATH "${prefix}" _prefix_real)
  string(FIND "${_sinkmoe_dir}" "${_prefix_real}/" _pos)
  if(NOT _pos EQUAL 0)
    message(FATAL_ERROR "[install] find_package used ${_sinkmoe_dir}, not the install prefix ${prefix}")
  endif()
elseif(MODE STREQUAL "subdir")
  run_step("configure" "${CMAKE_COMMAND}" ${gen_args}
    -S "${SINKMOE_SOURCE_DIR}/test/package/subdir_consumer" -B "${build_dir}"
    "-DSINKMOE_SOURCE_DIR=${SINKMOE_SOURCE_DIR}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
else()
  message(FATAL_ERROR "run_install_test.cmake: MODE must be install or subdir (got '${MODE}')")
endif()

run_step("build" "${CMAKE_COMMAND}" --build "${build_dir}" -j 2)

set(exe "${build_dir}/sinkmoe_consumer")
if(NOT EXISTS "${exe}" AND EXISTS "${exe}.exe")
  set(exe "${exe}.exe")
endif()
message(STATUS "[${MODE}] run: ${exe}")
execute_process(COMMAND "${exe}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "[${MODE}] output: ${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "[${MODE}] consumer exited with ${rc}")
endif()
string(FIND "${out}" "${expected_version}" _pos)
if(_pos EQUAL -1)
  message(FATAL_ERROR "[${MODE}] consumer did not print version ${expected_version}")
endif()
message(STATUS "[${MODE}] OK")
