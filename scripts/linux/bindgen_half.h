/*
 * Force-included when running bindgen over mlx-c's headers on x86-64 Linux (see
 * mlxc_compat.h). mlx-rs reads f16 scalars through the tuple struct bindgen makes of
 * `__fp16` (`.0`), and bf16 scalars as plain u16 bits.
 */
#ifndef QWEN_IMAGE_RS_BINDGEN_HALF_H
#define QWEN_IMAGE_RS_BINDGEN_HALF_H
#include <stdint.h>
#define HAS_FLOAT16
#define HAS_BFLOAT16
typedef __fp16 float16_t;
typedef uint16_t bfloat16_t;
#endif
