// doctest helpers shared by the storage tests (test_util.h stays free of doctest: the crash
// harness runs it in forked children).
#pragma once

#include <doctest/doctest.h>

#include "storage/status.h"

// REQUIRE that a Status is ok, showing its message when it is not.
#define REQUIRE_OK(expr)                     \
  do {                                       \
    const ::kiv::Status s_ = (expr);         \
    REQUIRE_MESSAGE(s_.ok(), s_.ToString()); \
  } while (0)
