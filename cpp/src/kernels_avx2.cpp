// The kernel compiled for the avx2 instruction set (flags in cpp/CMakeLists.txt).
#include "vec_avx2.hpp"
#define FASTXENT_ISA_NAMESPACE avx2_isa
#include "kernel/isa_unit.inl"
