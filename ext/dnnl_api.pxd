# The few oneDNN C API functions ext/dnnl.pyx uses, loaded at run time with dlopen from the
# libdnnl.so.3 of the PyPI package onednn-cpu-gomp (oneDNN 3.2, OpenMP runtime = libgomp, the one
# Cython's prange uses). That package ships no headers (onednn-devel-cpu-gomp does), so the
# declarations are written here: every handle is an opaque pointer in oneDNN 3.x, and the enum
# values below were printed from the 3.2 headers (dnnl_types.h, dnnl_common_types.h); they are
# part of the library's stable ABI within major version 3. Loading at run time, not linking,
# keeps ext/ building and running (on our own kernels) where the package is absent.

from libc.stdint cimport int64_t

cdef extern from * nogil:
    """
    #include <dlfcn.h>
    #include <stdint.h>
    #include <stdio.h>
    typedef struct { int arg; void *memory; } dnnl_exec_arg_t;
    typedef struct { int major, minor, patch; const char *hash;
                     unsigned cpu_runtime, gpu_runtime; } dnnl_version_t;
    #define DNNL_FNS(X) \
      X(int, dnnl_engine_create, (void **e, int kind, size_t index)) \
      X(int, dnnl_stream_create, (void **s, void *e, unsigned flags)) \
      X(int, dnnl_memory_desc_create_with_tag, (void **md, int nd, const int64_t *dims, int dt, int tag)) \
      X(int, dnnl_memory_desc_create_with_strides, (void **md, int nd, const int64_t *dims, int dt, \
                                                   const int64_t *strides)) \
      X(int, dnnl_memory_desc_destroy, (void *md)) \
      X(size_t, dnnl_memory_desc_get_size, (const void *md)) \
      X(int, dnnl_memory_desc_equal, (const void *a, const void *b)) \
      X(int, dnnl_memory_create, (void **m, const void *md, void *e, void *handle)) \
      X(int, dnnl_memory_set_data_handle, (void *m, void *handle)) \
      X(int, dnnl_memory_destroy, (void *m)) \
      X(int, dnnl_primitive_attr_create, (void **a)) \
      X(int, dnnl_primitive_attr_destroy, (void *a)) \
      X(int, dnnl_primitive_attr_set_scratchpad_mode, (void *a, int mode)) \
      X(int, dnnl_primitive_attr_set_scales_mask, (void *a, int arg, int mask)) \
      X(int, dnnl_primitive_attr_set_post_ops, (void *a, const void *po)) \
      X(int, dnnl_post_ops_create, (void **po)) \
      X(int, dnnl_post_ops_destroy, (void *po)) \
      X(int, dnnl_post_ops_append_binary, (void *po, int alg, const void *md)) \
      X(int, dnnl_matmul_primitive_desc_create, (void **pd, void *e, const void *src, const void *w, \
                                                 const void *bias, const void *dst, const void *attr)) \
      X(int, dnnl_reorder_primitive_desc_create, (void **pd, const void *src, void *se, const void *dst, \
                                                  void *de, const void *attr)) \
      X(int, dnnl_primitive_desc_query, (const void *pd, int what, int index, void *result)) \
      X(const void *, dnnl_primitive_desc_query_md, (const void *pd, int what, int index)) \
      X(int, dnnl_primitive_desc_destroy, (void *pd)) \
      X(int, dnnl_primitive_create, (void **p, const void *pd)) \
      X(int, dnnl_primitive_execute, (const void *p, void *s, int nargs, const dnnl_exec_arg_t *args)) \
      X(int, dnnl_primitive_destroy, (void *p)) \
      X(int, dnnl_stream_wait, (void *s)) \
      X(const dnnl_version_t *, dnnl_version, (void))

    #define DNNL_PTR(ret, name, args) ret (*name) args;
    typedef struct { DNNL_FNS(DNNL_PTR) } dnnl_api_t;
    static dnnl_api_t dnnl;

    /* dlopen path and fill `dnnl`; 0 on success, else -1 with the reason in err. */
    static int dnnl_load(const char *path, char *err, size_t errlen) {
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) { snprintf(err, errlen, "%s", dlerror()); return -1; }
    #define DNNL_SYM(ret, name, args) \
        if (!(dnnl.name = (ret (*) args)dlsym(h, #name))) { \
            snprintf(err, errlen, "%s has no symbol %s", path, #name); return -1; }
        DNNL_FNS(DNNL_SYM)
        return 0;
    }
    """
    ctypedef struct dnnl_exec_arg_t:
        int arg
        void *memory
    ctypedef struct dnnl_version_t:
        int major, minor, patch
        const char *hash
    ctypedef struct dnnl_api_t:
        int (*dnnl_engine_create)(void **e, int kind, size_t index) noexcept nogil
        int (*dnnl_stream_create)(void **s, void *e, unsigned flags) noexcept nogil
        int (*dnnl_memory_desc_create_with_tag)(void **md, int nd, const int64_t *dims, int dt, int tag) noexcept nogil
        int (*dnnl_memory_desc_create_with_strides)(void **md, int nd, const int64_t *dims, int dt,
                                                    const int64_t *strides) noexcept nogil
        int (*dnnl_memory_desc_destroy)(void *md) noexcept nogil
        size_t (*dnnl_memory_desc_get_size)(const void *md) noexcept nogil
        int (*dnnl_memory_desc_equal)(const void *a, const void *b) noexcept nogil
        int (*dnnl_memory_create)(void **m, const void *md, void *e, void *handle) noexcept nogil
        int (*dnnl_memory_set_data_handle)(void *m, void *handle) noexcept nogil
        int (*dnnl_memory_destroy)(void *m) noexcept nogil
        int (*dnnl_primitive_attr_create)(void **a) noexcept nogil
        int (*dnnl_primitive_attr_destroy)(void *a) noexcept nogil
        int (*dnnl_primitive_attr_set_scratchpad_mode)(void *a, int mode) noexcept nogil
        int (*dnnl_primitive_attr_set_scales_mask)(void *a, int arg, int mask) noexcept nogil
        int (*dnnl_primitive_attr_set_post_ops)(void *a, const void *po) noexcept nogil
        int (*dnnl_post_ops_create)(void **po) noexcept nogil
        int (*dnnl_post_ops_destroy)(void *po) noexcept nogil
        int (*dnnl_post_ops_append_binary)(void *po, int alg, const void *md) noexcept nogil
        int (*dnnl_matmul_primitive_desc_create)(void **pd, void *e, const void *src, const void *w,
                                                 const void *bias, const void *dst, const void *attr) noexcept nogil
        int (*dnnl_reorder_primitive_desc_create)(void **pd, const void *src, void *se, const void *dst,
                                                  void *de, const void *attr) noexcept nogil
        int (*dnnl_primitive_desc_query)(const void *pd, int what, int index, void *result) noexcept nogil
        const void *(*dnnl_primitive_desc_query_md)(const void *pd, int what, int index) noexcept nogil
        int (*dnnl_primitive_desc_destroy)(void *pd) noexcept nogil
        int (*dnnl_primitive_create)(void **p, const void *pd) noexcept nogil
        int (*dnnl_primitive_execute)(const void *p, void *s, int nargs, const dnnl_exec_arg_t *args) noexcept nogil
        int (*dnnl_primitive_destroy)(void *p) noexcept nogil
        int (*dnnl_stream_wait)(void *s) noexcept nogil
        const dnnl_version_t *(*dnnl_version)() noexcept nogil
    dnnl_api_t dnnl
    int dnnl_load(const char *path, char *err, size_t errlen)

# Enum values of oneDNN 3.2 (printed from its headers).
cdef enum:
    DNNL_SUCCESS = 0
    DT_BF16 = 2
    DT_F32 = 3
    DT_S8 = 5
    DT_U8 = 6
    TAG_ANY = 1
    TAG_A = 2             # 1-D
    TAG_AB = 3            # plain 2-D, row-major
    TAG_BA = 14           # 2-D transposed (column-major)
    ENGINE_CPU = 1
    STREAM_DEFAULT = 1
    SCRATCHPAD_USER = 1
    BINARY_ADD = 0x1fff0
    BINARY_MUL = 0x1fff1
    QUERY_IMPL_INFO_STR = 8
    QUERY_WEIGHTS_MD = 131
    QUERY_SCRATCHPAD_MD = 136
    ARG_SRC = 1
    ARG_SRC_1 = 2
    ARG_DST = 17
    ARG_WEIGHTS = 33
    ARG_SCRATCHPAD = 80
    ARG_ATTR_SCALES = 4096
    ARG_POST_OP_0 = 32768  # DNNL_ARG_ATTR_MULTIPLE_POST_OP(0)
