/* The lean load generator of bench/fanout.py: many feed subscribers in one epoll loop.
 *
 * The Python clients of fanout.py cost a few microseconds of interpreter per
 * read; against a server that sends every message to every socket on its own
 * (Node's ws), that saturated the client core before the server. This client
 * does the same work -- upgrade, subscribe, count change messages, answer
 * pings -- in C, so the server is the limit. fanout.py compiles it with
 * `cc -O2` into its cache folder and drives it over stdin/stdout, one command
 * per line:
 *
 *   connect <n> <ws|wsmux|sse> <path> [<subscribe-json>]
 *                      open n subscribers; answers "connected <ok> <failed>"
 *   count              "count <change messages> <connections lost> <closes seen>"
 *   mark on|off        record (seq, CLOCK_MONOTONIC ns) of every change message from now
 *                      (or stop); answers "marking on|off"
 *   wait <n> <ms>      answer "arrived <k>" once k >= n are recorded, or after ms
 *   until <n> <ms>     answer "reached <change messages> <ns>" once n change messages
 *                      have arrived (ns: when the read that made it n began), or after ms
 *   arrivals           "arrivals <k>", then k lines "<seq> <ns>"; clears them
 *   close              drop every connection; answers "closed"
 *   quit
 *
 *   cc -O2 -o fanout_client bench/fanout_client.c
 *   ./fanout_client 127.0.0.1 8000
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum kind { WS, WSMUX, SSE };
enum state { CONNECTING, HEAD, HELLO, SUBSCRIBED, READY, DEAD };

typedef struct {
    int fd;
    enum kind kind;
    enum state state;
    char *pending; /* bytes of an incomplete frame or event, kept for the next read */
    size_t pending_len, pending_cap;
} conn_t;

static const char SSE_MARK[] = "event: change\ndata: ";
static struct sockaddr_in server;
static int epfd;
static conn_t **conns;
static size_t nconns, conns_cap;
static enum kind kind; /* of the connections being opened */
static char request[1024], subscribe_frame[512];
static size_t request_len, subscribe_len;
static long long changes, lost, closes;
static int marking, closing;
static long long *marks; /* pairs: seq, ns */
static size_t nmarks, marks_cap;
static long long wait_target = -1, wait_deadline;
static long long until_target = -1, until_deadline, until_at;
static size_t connecting, connect_ok, connect_failed, to_open;
static int just_closed; /* the batch's remaining events may name freed connections */
#define IN_FLIGHT 100 /* connections being opened at once: a server's backlog is finite */
static long long connect_deadline;
static unsigned char readbuf[1 << 18];

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void record(const unsigned char *msg, size_t len, long long at) {
    if (!marking) return;
    long long seq = -1;
    const unsigned char *p = memmem(msg, len, "\"seq\":", 6);
    if (p) {
        seq = 0;
        for (p += 6; p < msg + len && *p >= '0' && *p <= '9'; p++) seq = seq * 10 + (*p - '0');
    }
    if (nmarks + 2 > marks_cap) {
        marks_cap = marks_cap ? marks_cap * 2 : 1 << 16;
        marks = realloc(marks, marks_cap * sizeof *marks);
    }
    marks[nmarks++] = seq;
    marks[nmarks++] = at;
}

static void drop(conn_t *c) {
    if (c->state == DEAD) return;
    if (c->state != READY) {
        connecting--;
        connect_failed++;
    } else if (!closing) {
        lost++;
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = DEAD;
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_cap = 0;
}

static void ready(conn_t *c) {
    c->state = READY;
    connecting--;
    connect_ok++;
}

static void send_all(conn_t *c, const void *data, size_t len) {
    /* Only small frames are sent (request, subscribe, pong): a full socket buffer
     * here means the server stopped reading, and the connection is useless. */
    if (send(c->fd, data, len, MSG_NOSIGNAL) != (ssize_t)len) drop(c);
}

/* One complete text message (a WebSocket text frame or an SSE event's data). */
static void message(conn_t *c, const unsigned char *msg, size_t len, long long at) {
    if (c->state == READY) {
        changes++;
        if (changes == until_target) until_at = at;
        record(msg, len, at);
    } else if (c->state == HELLO && c->kind == WSMUX) {
        send_all(c, subscribe_frame, subscribe_len);
        c->state = SUBSCRIBED;
    } else {
        ready(c); /* the hello (or, on /ws, the "subscribed" answer) */
    }
}

/* Consume complete WebSocket frames; returns how many bytes were used. */
static size_t ws_frames(conn_t *c, const unsigned char *d, size_t n, long long at) {
    size_t i = 0;
    while (n - i >= 2 && c->state != DEAD) {
        size_t len = d[i + 1] & 0x7F, head = 2;
        if (len == 126) {
            if (n - i < 4) break;
            len = ((size_t)d[i + 2] << 8) | d[i + 3];
            head = 4;
        } else if (len == 127) {
            if (n - i < 10) break;
            len = 0;
            for (int k = 2; k < 10; k++) len = (len << 8) | d[i + k];
            head = 10;
        }
        if (n - i - head < len) break;
        int opcode = d[i] & 0x0F;
        const unsigned char *payload = d + i + head;
        if (opcode == 1) {
            message(c, payload, len, at);
        } else if (opcode == 9 && len < 126) { /* ping: pong, masked with a zero key */
            unsigned char pong[6 + 125] = {0x8A, (unsigned char)(0x80 | len), 0, 0, 0, 0};
            memcpy(pong + 6, payload, len);
            send_all(c, pong, 6 + len);
        } else if (opcode == 8) {
            closes++;
            drop(c);
            return n;
        }
        i += head + len;
    }
    return i;
}

/* Consume complete SSE events ("...\n\n"); a change event's data is a message. */
static size_t sse_events(conn_t *c, const unsigned char *d, size_t n, long long at) {
    size_t i = 0;
    for (;;) {
        const unsigned char *end = memmem(d + i, n - i, "\n\n", 2);
        if (!end) break;
        size_t stop = end - d;
        if (c->state != READY) {
            if (memmem(d + i, stop - i, "event: hello", 12)) ready(c);
        } else {
            const unsigned char *mark = memmem(d + i, stop - i, SSE_MARK, sizeof SSE_MARK - 1);
            if (mark) message(c, mark, d + stop - mark, at);
        }
        i = stop + 2;
    }
    return i;
}

static size_t consume(conn_t *c, const unsigned char *d, size_t n, long long at) {
    size_t used = 0;
    if (c->state == HEAD) {
        const unsigned char *end = memmem(d, n, "\r\n\r\n", 4);
        if (!end) return 0;
        int ok = c->kind == SSE ? n >= 12 && !memcmp(d, "HTTP/1.1 200", 12)
                             : n >= 12 && !memcmp(d, "HTTP/1.1 101", 12);
        if (!ok) {
            drop(c);
            return n;
        }
        used = end + 4 - d;
        c->state = HELLO;
    }
    return used + (c->kind == SSE ? sse_events(c, d + used, n - used, at)
                               : ws_frames(c, d + used, n - used, at));
}

static void readable(conn_t *c) {
    long long at = now_ns();
    for (;;) {
        ssize_t got = recv(c->fd, readbuf, sizeof readbuf, 0);
        if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
            drop(c);
            return;
        }
        if (got < 0) return;
        const unsigned char *d = readbuf;
        size_t n = (size_t)got;
        if (c->pending_len) { /* join the kept bytes with the new ones */
            if (c->pending_len + n > c->pending_cap) {
                c->pending_cap = (c->pending_len + n) * 2;
                c->pending = realloc(c->pending, c->pending_cap);
            }
            memcpy(c->pending + c->pending_len, readbuf, n);
            d = (unsigned char *)c->pending;
            n += c->pending_len;
        }
        size_t used = consume(c, d, n, at);
        if (c->state == DEAD) return;
        size_t rest = n - used;
        if (rest && d != (unsigned char *)c->pending) {
            if (rest > c->pending_cap) {
                c->pending_cap = rest * 2;
                c->pending = realloc(c->pending, c->pending_cap);
            }
        }
        if (rest) memmove(c->pending, d + used, rest);
        c->pending_len = rest;
        if ((size_t)got < sizeof readbuf) return;
    }
}

static void writable(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        drop(c);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->state = HEAD;
    send_all(c, request, request_len);
}

static void open_one(void) {
    conn_t *c = calloc(1, sizeof *c);
    c->kind = kind;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (nconns == conns_cap) {
        conns_cap = conns_cap ? conns_cap * 2 : 1024;
        conns = realloc(conns, conns_cap * sizeof *conns);
    }
    conns[nconns++] = c;
    connecting++;
    if (c->fd < 0) {
        c->state = DEAD;
        connecting--;
        connect_failed++;
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    if (connect(c->fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS)
        drop(c);
}

static void masked(const char *text) { /* a client text frame, zero mask key */
    size_t len = strlen(text);
    subscribe_frame[0] = (char)0x81;
    subscribe_frame[1] = (char)(0x80 | len);
    memset(subscribe_frame + 2, 0, 4);
    memcpy(subscribe_frame + 6, text, len);
    subscribe_len = 6 + len;
}

static void command(char *line) {
    char verb[16] = "", arg[512] = "", path[256] = "";
    long long n = 0, ms = 0;
    if (sscanf(line, "connect %lld %15s %255s %511[^\n]", &n, verb, path, arg) >= 3) {
        kind = !strcmp(verb, "sse") ? SSE : !strcmp(verb, "wsmux") ? WSMUX : WS;
        if (kind == SSE)
            request_len = snprintf(request, sizeof request,
                                   "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   "Accept: text/event-stream\r\n\r\n", path);
        else
            request_len = snprintf(request, sizeof request,
                                   "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                                   "Connection: Upgrade\r\nSec-WebSocket-Key: "
                                   "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                                   path);
        if (kind == WSMUX) masked(arg);
        connect_ok = connect_failed = 0;
        closing = 0;
        connect_deadline = now_ns() + 60000000000LL;
        to_open = (size_t)n;
        return;
    }
    if (!strncmp(line, "count", 5)) {
        printf("count %lld %lld %lld\n", changes, lost, closes);
    } else if (sscanf(line, "mark %15s", verb) == 1) {
        marking = !strcmp(verb, "on");
        nmarks = 0;
        printf("marking %s\n", marking ? "on" : "off");
    } else if (sscanf(line, "wait %lld %lld", &n, &ms) == 2) {
        wait_target = n;
        wait_deadline = now_ns() + ms * 1000000LL;
        return;
    } else if (sscanf(line, "until %lld %lld", &n, &ms) == 2) {
        until_target = n;
        until_at = changes >= n ? now_ns() : 0;
        until_deadline = now_ns() + ms * 1000000LL;
        return;
    } else if (!strncmp(line, "arrivals", 8)) {
        printf("arrivals %zu\n", nmarks / 2);
        for (size_t i = 0; i < nmarks; i += 2) printf("%lld %lld\n", marks[i], marks[i + 1]);
        nmarks = 0;
    } else if (!strncmp(line, "close", 5)) {
        closing = 1;
        for (size_t i = 0; i < nconns; i++) {
            if (conns[i]->state != DEAD) {
                conns[i]->state = READY; /* dropped on purpose: not lost, not failed */
                drop(conns[i]);
            }
            free(conns[i]);
        }
        nconns = 0;
        connecting = 0;
        to_open = 0;
        just_closed = 1;
        printf("closed\n");
    } else if (!strncmp(line, "quit", 4)) {
        exit(0);
    } else {
        printf("error unknown command\n");
    }
    fflush(stdout);
}

static void check_waits(void) {
    long long t = now_ns();
    if (wait_target >= 0 && ((long long)nmarks / 2 >= wait_target || t >= wait_deadline)) {
        printf("arrived %zu\n", nmarks / 2);
        fflush(stdout);
        wait_target = -1;
    }
    if (until_target >= 0 && (until_at || t >= until_deadline)) {
        printf("reached %lld %lld\n", changes, until_at ? until_at : t);
        fflush(stdout);
        until_target = -1;
    }
    while (to_open && connecting < IN_FLIGHT) {
        to_open--;
        open_one();
    }
    if (connect_deadline && ((connecting == 0 && to_open == 0) || t >= connect_deadline)) {
        printf("connected %zu %zu\n", connect_ok, connect_failed + connecting + to_open);
        to_open = 0;
        fflush(stdout);
        connect_deadline = 0;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <host> <port>\n", argv[0]);
        return 2;
    }
    server.sin_family = AF_INET;
    server.sin_port = htons((unsigned short)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &server.sin_addr);
    epfd = epoll_create1(0);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event in = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &in);
    static char line[4096];
    size_t line_len = 0;
    struct epoll_event events[512];
    for (;;) {
        int timeout = (wait_target >= 0 || until_target >= 0 || connect_deadline) ? 1 : -1;
        just_closed = 0;
        int got = epoll_wait(epfd, events, 512, timeout);
        for (int i = 0; i < got; i++) {
            conn_t *c = events[i].data.ptr;
            if (c == NULL) { /* a command (or the end of stdin: the driver is gone) */
                ssize_t r = read(0, line + line_len, sizeof line - 1 - line_len);
                if (r == 0) return 0;
                if (r < 0) continue;
                line_len += (size_t)r;
                char *nl;
                while ((nl = memchr(line, '\n', line_len))) {
                    *nl = 0;
                    command(line);
                    line_len -= (size_t)(nl + 1 - line);
                    memmove(line, nl + 1, line_len);
                }
                if (just_closed) break;
                continue;
            }
            if (c->state == DEAD) continue;
            if (c->state == CONNECTING) {
                if (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) writable(c);
            } else {
                readable(c);
            }
        }
        check_waits();
    }
}
