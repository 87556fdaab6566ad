// `guarded(err, len, f)`: runs f and turns any C++ exception into a non-zero return value with
// its message (the first part, without c10's backtrace) in `err`. Shared by the C shims.
#pragma once

#include <c10/util/Exception.h>

#include <cstring>
#include <exception>
#include <string>

namespace {

void set_error(char* err, size_t len, const std::string& msg) {
  if (err == nullptr || len == 0) return;
  std::string first = msg;
  // c10 errors append a C++ backtrace after the first line: keep the message only.
  auto cut = first.find("\nException raised from");
  if (cut != std::string::npos) first = first.substr(0, cut);
  std::strncpy(err, first.c_str(), len - 1);
  err[len - 1] = '\0';
}

template <typename F>
int guarded(char* err, size_t len, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    set_error(err, len, e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_error(err, len, e.what());
  } catch (...) {
    set_error(err, len, "unknown C++ exception");
  }
  return 1;
}

}  // namespace
