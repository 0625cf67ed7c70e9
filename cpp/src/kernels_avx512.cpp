// The kernel compiled for the avx512 instruction set (flags in cpp/CMakeLists.txt).
#include "vec_avx512.hpp"
#define FASTXENT_ISA_NAMESPACE avx512_isa
#include "kernel/isa_unit.inl"
