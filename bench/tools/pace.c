/* Load generator for the latency scenario of `make bench`: POSTs one price per request to
 * returns-api at a fixed rate (open loop), over keep-alive connections, one thread each.
 * Request n is due at start + n / RATE; thread k sends the requests n = k mod THREADS.
 * It prints "<operation_id> <due ns> <sent ns> <answered ns>" per request (CLOCK_MONOTONIC, the clock the
 * consumer stamps arrivals with), then "sent N late L" on stderr: L requests went out more
 * than 1 ms after they were due (the generator, not the server, would then be the limit).
 * Latency is taken from the due time, so a server that holds a connection back is charged
 * for the requests queued behind it (no coordinated omission).
 *
 * Symbol n % SYMBOLS gets the price of day 1 + n / SYMBOLS after 2001-01-02; the caller posts
 * a first price (2001-01-02) per symbol beforehand, so every request yields one new return.
 *
 *   pace --port P --rate R --count N [--threads T] [--symbols S] [--start-ns NS]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port, threads = 32, symbols = 200;
static long count;
static double rate;
static long long start_ns;

typedef struct {
  int k;
  long sent, late;
  char (*ids)[37];
  long long *due, *at, *answered;
} worker_t;

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int connect_api(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); exit(1); }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/* Reads one response; copies the operation id; returns 0 when the status is 202. */
static int read_response(int fd, char *id) {
  char buf[4096];
  size_t have = 0;
  for (;;) {
    ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
    if (r <= 0) { fprintf(stderr, "read: %s\n", r ? strerror(errno) : "closed"); exit(1); }
    have += r;
    buf[have] = 0;
    char *end = strstr(buf, "\r\n\r\n");
    if (!end) continue;
    char *cl = strcasestr(buf, "content-length:");
    size_t body = cl ? strtoul(cl + 15, NULL, 10) : 0;
    if (have < (size_t)(end + 4 - buf) + body) continue;
    char *op = strstr(end, "\"operation_id\"");
    if (op && (op = strchr(op + 14, '"'))) { memcpy(id, op + 1, 36); id[36] = 0; }
    else id[0] = 0;
    if (strncmp(buf + 9, "202", 3) == 0) return 0;
    fprintf(stderr, "answer: %s\n", buf);
    return 1;
  }
}

static void *run(void *arg) {
  worker_t *w = arg;
  int fd = connect_api();
  char req[512], body[160], date[16];
  for (long n = w->k; n < count; n += threads) {
    long long due = start_ns + (long long)(n * 1e9 / rate);
    struct timespec ts = {due / 1000000000LL, due % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
    time_t day = 978436800 + 86400 * (1 + n / symbols);
    struct tm tm;  /* gmtime_r: each connection has a thread, and gmtime's result is shared */
    strftime(date, sizeof date, "%Y-%m-%d", gmtime_r(&day, &tm));
    int blen = snprintf(body, sizeof body, "{\"symbol\":\"L%03d\",\"prices\":[{\"date\":\"%s\",\"close\":%ld}]}",
                        (int)(n % symbols), date, 100 + n % 7);
    int len = snprintf(req, sizeof req, "POST /prices HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       "Content-Length: %d\r\n\r\n%s", blen, body);
    long long at = now_ns();
    if (write(fd, req, len) != len) { perror("write"); exit(1); }
    long i = w->sent++;
    if (read_response(fd, w->ids[i])) { fprintf(stderr, "request %ld was not accepted\n", n); exit(1); }
    w->due[i] = due;
    w->at[i] = at;
    w->answered[i] = now_ns();
    if (at - due > 1000000) w->late++;
  }
  close(fd);
  return NULL;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--rate") && i + 1 < argc) rate = atof(argv[++i]);
    else if (!strcmp(argv[i], "--count") && i + 1 < argc) count = atol(argv[++i]);
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--symbols") && i + 1 < argc) symbols = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--start-ns") && i + 1 < argc) start_ns = atoll(argv[++i]);
    else { fprintf(stderr, "usage: pace --port P --rate R --count N [--threads T] [--symbols S] [--start-ns NS]\n"); return 2; }
  }
  if (!port || rate <= 0 || count <= 0 || threads <= 0 || symbols <= 0) { fprintf(stderr, "--port, --rate and --count are needed\n"); return 2; }
  if (!start_ns) start_ns = now_ns() + 200000000LL;
  worker_t *w = calloc(threads, sizeof *w);
  pthread_t *t = calloc(threads, sizeof *t);
  long per = count / threads + 1;
  for (int k = 0; k < threads; k++) {
    w[k].k = k;
    w[k].ids = malloc(per * sizeof *w[k].ids);
    w[k].due = malloc(per * sizeof(long long));
    w[k].at = malloc(per * sizeof(long long));
    w[k].answered = malloc(per * sizeof(long long));
    pthread_create(&t[k], NULL, run, &w[k]);
  }
  long sent = 0, late = 0;
  for (int k = 0; k < threads; k++) {
    pthread_join(t[k], NULL);
    for (long i = 0; i < w[k].sent; i++) printf("%s %lld %lld %lld\n", w[k].ids[i], w[k].due[i], w[k].at[i], w[k].answered[i]);
    sent += w[k].sent;
    late += w[k].late;
  }
  fprintf(stderr, "sent %ld late %ld\n", sent, late);
  return 0;
}
