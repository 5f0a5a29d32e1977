/*
 * main.c: neuroshardd's entry point; everything else is in ns_daemon_main (daemon.c).
 */
#include "neuroshard/node.h"

int main(int argc, char *argv[], char *envp[])
{
    return ns_daemon_main(argc, argv, envp);
}
