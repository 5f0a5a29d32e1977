/*
 * main.c: neuroshardd's entry point; everything else is in ns_daemon_main (daemon.c).
 *
 * One thing must happen before anything else: OpenBLAS chooses its kernels when it loads, and an
 * OpenBLAS older than the CPU takes it for a generic x86-64 and multiplies several times slower.
 * When that happened, the daemon sets OPENBLAS_CORETYPE to the right core and re-executes itself
 * once (the variable is then set, so it never loops).
 */
#include <stdlib.h>
#include <unistd.h>

#include "neuroshard/exec.h"
#include "neuroshard/node.h"

int main(int argc, char *argv[], char *envp[])
{
    const char *core = ns_exec_blas_coretype_hint();
    if (core != NULL && getenv("OPENBLAS_CORETYPE") == NULL) {
        setenv("OPENBLAS_CORETYPE", core, 1);
        execv("/proc/self/exe", argv); /* on failure, go on with the slow kernels */
    }
    extern char **environ;
    return ns_daemon_main(argc, argv, core != NULL ? environ : envp);
}
