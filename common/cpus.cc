#include "common/cpus.h"

#include <sched.h>

#include <algorithm>
#include <thread>

namespace keel::common {

int UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  const int cpus = sched_getaffinity(0, sizeof(set), &set) == 0
                       ? CPU_COUNT(&set)
                       : static_cast<int>(std::thread::hardware_concurrency());
  return std::max(cpus, 1);
}

}  // namespace keel::common
