// OpenBLAS's CBLAS interface (Debian's libopenblas-dev), for the dense correlation matrix.
#ifndef STEGA_COPENBLAS_SHIM_H
#define STEGA_COPENBLAS_SHIM_H
#include <cblas.h>
#endif
