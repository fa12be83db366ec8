#pragma once

namespace keel::common {

// The CPUs this process may run on (its affinity mask; the machine's count
// when that cannot be read), at least 1: the default number of event loops
// or worker threads.
int UsableCpus();

}  // namespace keel::common
