/*
 * tty.c: reading a secret (a passphrase) from the controlling terminal without echo.
 *
 * The secret never passes through stdin's buffer or the log. Without a terminal the caller must
 * take the secret from the environment instead; this file never guesses.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "neuroshard/base.h"

int ns_tty_read_secret(const char *prompt, char *out, size_t out_size)
{
    NS_ASSERT(out_size > 1);
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return NS_ENOENT;
    struct termios old, quiet;
    if (tcgetattr(fd, &old) != 0) {
        close(fd);
        return NS_ENOENT;
    }
    quiet = old;
    quiet.c_lflag &= ~(tcflag_t)ECHO;
    quiet.c_lflag |= ICANON;
    ssize_t w = write(fd, prompt, strlen(prompt));
    (void)w;
    tcsetattr(fd, TCSAFLUSH, &quiet);
    size_t n = 0;
    int rc = NS_OK;
    for (;;) {
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || c == '\n')
            break;
        if (n + 1 >= out_size) {
            rc = NS_ETOOBIG;
            continue; /* keep reading to the end of the line, then refuse */
        }
        out[n++] = c;
    }
    out[n] = '\0';
    tcsetattr(fd, TCSAFLUSH, &old);
    w = write(fd, "\n", 1);
    close(fd);
    return rc;
}
