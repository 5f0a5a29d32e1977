/*
 * listen.c: listening TCP sockets made by hand, so a taken port gets a clear error.
 *
 * libmicrohttpd can bind by itself but then reports only "failed"; binding here keeps errno,
 * resolves port 0 to the port the kernel chose, and hands the socket over.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "node_internal.h"

#define LISTEN_BACKLOG 64

int ns_listen_tcp(const ns_addr_text *addr, int *fd_out, ns_addr_text *bound)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr->host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(addr->port);
        len = sizeof *v4;
    } else if (inet_pton(AF_INET6, addr->host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(addr->port);
        len = sizeof *v6;
    } else {
        return NS_EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NS_EIO;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
        int e = errno;
        close(fd);
        return e == EADDRINUSE ? NS_EADDRINUSE : (e == EACCES ? NS_EPERM : NS_EIO);
    }
    len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
        close(fd);
        return NS_EIO;
    }
    *bound = *addr;
    bound->port = ntohs(ss.ss_family == AF_INET ? v4->sin_port : v6->sin6_port);
    *fd_out = fd;
    return NS_OK;
}
