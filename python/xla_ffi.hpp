// The XLA FFI handlers of xla_ffi.cpp, as the binding sees them: names and raw
// handler pointers, with no XLA type in sight. Empty when the build had no XLA
// FFI headers (fastxent.jax then falls back to jax.pure_callback).
#pragma once
#include <vector>

namespace fastxent_xla {

struct Target {
  const char* name;  // the name fastxent.jax registers and calls
  void* handler;     // an XLA_FFI_Handler*
};

const std::vector<Target>& targets();

}  // namespace fastxent_xla
