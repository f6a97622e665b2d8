#pragma once
// Umbrella header: everything a host (g++-only) user needs.
#include <sinkmoe/args.hpp>
#include <sinkmoe/attention.hpp>
#include <sinkmoe/balance/balance.hpp>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/core/tensor_view.hpp>
#include <sinkmoe/exec.hpp>
#include <sinkmoe/params.hpp>
#include <sinkmoe/version.hpp>
