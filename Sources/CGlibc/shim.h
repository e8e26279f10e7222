// The glibc headers Swift's Glibc module does not import: <malloc.h> (mallopt, malloc_trim)
// and <sys/eventfd.h>. Declarations only; no logic in C.
#ifndef STEGA_CSYSTEM_SHIM_H
#define STEGA_CSYSTEM_SHIM_H

#include <malloc.h>
#include <sys/eventfd.h>

#endif
