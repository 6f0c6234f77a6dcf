/*
 * Force-included (`-include`) when compiling mlx-c 0.7.0 against MLX's PyPI build on Linux
 * with gcc 12 / libstdc++ 12. Two gaps are filled here, without touching mlx-c's sources:
 *
 * 1. mlx-c's half.h declares float16_t/bfloat16_t (and so the f16/bf16 entry points that
 *    mlx-rs calls) only on aarch64. On x86-64 we declare both as 16-bit storage types; the
 *    entry points only move bits (pointers and `item<T>()` reads), never convert values.
 * 2. mlx/c/private/io.h calls std::format, which libstdc++ 12 does not have. A minimal
 *    formatter for sequential `{}` placeholders is all those call sites use.
 */
#ifndef QWEN_IMAGE_RS_MLXC_COMPAT_H
#define QWEN_IMAGE_RS_MLXC_COMPAT_H

#include <stdint.h>

#define HAS_FLOAT16
#define HAS_BFLOAT16
typedef uint16_t float16_t;
typedef uint16_t bfloat16_t;

#if defined(__cplusplus) && !__has_include(<format>)
#include <sstream>
#include <string>
#include <string_view>

namespace std {
namespace qwen_compat {
inline void format_into(std::ostringstream& out, std::string_view fmt) { out << fmt; }

template <class First, class... Rest>
void format_into(std::ostringstream& out, std::string_view fmt, First&& first, Rest&&... rest) {
  const auto at = fmt.find("{}");
  if (at == std::string_view::npos) {
    out << fmt;
    return;
  }
  out << fmt.substr(0, at) << first;
  format_into(out, fmt.substr(at + 2), std::forward<Rest>(rest)...);
}
} // namespace qwen_compat

template <class... Args>
std::string format(std::string_view fmt, Args&&... args) {
  std::ostringstream out;
  qwen_compat::format_into(out, fmt, std::forward<Args>(args)...);
  return out.str();
}
} // namespace std
#endif

#endif
