// The entry points every ISA variant provides; dispatch.cpp picks one per call.
#pragma once
#include <cstdint>

#include "fastxent/fastxent.hpp"

#define FASTXENT_DECLARE_ISA(ns)                                                          \
  namespace fastxent::ns {                                                                \
  template <class T> double run_loss(const Problem<T>& p);                                \
  template <class T>                                                                      \
  void run_rowwise(RowOp op, const T* x, int64_t rows, int64_t classes, int64_t xs,       \
                   T* out, int64_t os);                                                   \
  template <class T> void run_exp(const T* x, T* out, int64_t n);                         \
  }

FASTXENT_DECLARE_ISA(generic_isa)
FASTXENT_DECLARE_ISA(avx2_isa)
FASTXENT_DECLARE_ISA(avx512_isa)
#undef FASTXENT_DECLARE_ISA
