// The kernel compiled for the generic instruction set (flags in cpp/CMakeLists.txt).
#include "vec_generic.hpp"
#define FASTXENT_ISA_NAMESPACE generic_isa
#include "kernel/isa_unit.inl"
