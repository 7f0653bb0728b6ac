// The OS thread ids of an OpenMP team, so the engine can tell its own idle workers (which may
// still be spinning after a parallel op) from other work when it reads the machine's load.
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <stdexcept>

#include "ops.h"

namespace codeinfer {

std::vector<int64_t> team_thread_ids(int num_threads) {
  if (num_threads < 1) throw std::invalid_argument("team_thread_ids: num_threads must be >= 1");
  std::vector<int64_t> ids(num_threads, 0);
  // libgomp keeps its pool threads in order, so thread i of a later team of this size (a kernel's,
  // or torch's) is the same OS thread.
#pragma omp parallel num_threads(num_threads)
  {
    const int i = omp_get_thread_num();
    if (i < num_threads) ids[i] = static_cast<int64_t>(syscall(SYS_gettid));
  }
  return ids;
}

}  // namespace codeinfer
