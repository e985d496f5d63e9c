/* Old glibc symbol versions for the few functions whose default version is recent.
 *
 * Built on a current glibc, a reference to dlopen binds dlopen@GLIBC_2.34 (libdl was merged
 * into libc in 2.34) and log binds log@GLIBC_2.29 (a faster implementation), which makes the
 * wheel need glibc >= 2.34 (manylinux_2_34). The old versions are still exported by every
 * later glibc and behave the same for our uses (dlopen with RTLD_NOLOAD of a library already
 * loaded, dlsym, log of a positive double), so pinning them lets the wheel run on glibc 2.17
 * (manylinux2014), the oldest the remaining symbols (clock_gettime@GLIBC_2.17) allow.
 *
 * Include it in each C file that calls these, after the system headers. Not under the
 * sanitizers (they intercept these functions by name) or when PB_NO_SYMVER is defined.
 */
#ifndef PB_GLIBC_H
#define PB_GLIBC_H

#if defined(__GLIBC__) && !defined(PB_NO_SYMVER) && !defined(__SANITIZE_ADDRESS__)
#  if defined(__x86_64__)
#    define PB_GLIBC_BASE "GLIBC_2.2.5"
#  elif defined(__aarch64__)
#    define PB_GLIBC_BASE "GLIBC_2.17"
#  endif
#  ifdef PB_GLIBC_BASE
#    define PB_PIN(fn) __asm__(".symver " #fn "," #fn "@" PB_GLIBC_BASE)
#  endif
#endif

#ifndef PB_PIN
#  define PB_PIN(fn) extern int pb_glibc_no_pin_ /* nothing to pin on this platform */
#endif

#endif /* PB_GLIBC_H */
