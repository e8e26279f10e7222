/* Baseline for `make bench`: a raw rabbitmq-c consumer, prefetch 100, manual ack of each
 * message (--no-ack: auto-ack, the transient mode). Consumes COUNT messages from QUEUE and
 * prints {"messages": N, "seconds": S, "per_second": R}, timed from the first delivery.
 *
 * With --bind KEY instead of --queue, it declares an exclusive queue bound to KEY on the
 * `events` exchange, prints "ready", and (with --arrivals) prints "<correlation_id> <ns>" for
 * each message, ns on CLOCK_MONOTONIC: the latency scenario's clock at the receiving end.
 * --timeout S ends it after S seconds whatever the count.
 *
 *   consumer --amqp-port Q (--queue NAME | --bind KEY) --count N [--no-ack] [--arrivals] [--timeout S]
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  int port = 5672, no_ack = 0, arrivals = 0, timeout_s = 0;
  long count = 0;
  const char *queue = NULL, *bind = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--amqp-port") && i + 1 < argc) port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--queue") && i + 1 < argc) queue = argv[++i];
    else if (!strcmp(argv[i], "--count") && i + 1 < argc) count = atol(argv[++i]);
    else if (!strcmp(argv[i], "--no-ack")) no_ack = 1;
    else if (!strcmp(argv[i], "--bind") && i + 1 < argc) bind = argv[++i];
    else if (!strcmp(argv[i], "--arrivals")) arrivals = 1;
    else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) timeout_s = atoi(argv[++i]);
    else { fprintf(stderr, "usage: consumer --amqp-port Q (--queue NAME | --bind KEY) --count N [--no-ack] [--arrivals]\n"); return 2; }
  }
  if ((!queue && !bind) || count <= 0) { fprintf(stderr, "--queue or --bind, and --count are needed\n"); return 2; }
  /* Arrival lines stay in memory until the end (setvbuf before any output): a reader that
   * drains the pipe only at the end must not hold the consumer back, and so delay the very
   * timestamps it measures. */
  if (arrivals) setvbuf(stdout, malloc(64 << 20), _IOFBF, 64 << 20); /* glibc ignores the size without a buffer */
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t *sock = amqp_tcp_socket_new(conn);
  if (amqp_socket_open(sock, "127.0.0.1", port)) { fprintf(stderr, "connect failed\n"); return 1; }
  if (amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest").reply_type != AMQP_RESPONSE_NORMAL)
    return 1;
  amqp_channel_open(conn, 1);
  amqp_bytes_t queue_name = queue ? amqp_cstring_bytes(queue) : amqp_empty_bytes;
  if (bind) {
    amqp_exchange_declare(conn, 1, amqp_cstring_bytes("events"), amqp_cstring_bytes("direct"), 0, 1, 0, 0,
                          amqp_empty_table);
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(conn, 1, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
    if (!ok) { fprintf(stderr, "queue.declare failed\n"); return 1; }
    queue_name = amqp_bytes_malloc_dup(ok->queue);
    amqp_queue_bind(conn, 1, queue_name, amqp_cstring_bytes("events"), amqp_cstring_bytes(bind), amqp_empty_table);
    if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) { fprintf(stderr, "bind failed\n"); return 1; }
  }
  if (!no_ack) amqp_basic_qos(conn, 1, 0, 100, 0);
  amqp_basic_consume(conn, 1, queue_name, amqp_empty_bytes, 0, no_ack, 0, amqp_empty_table);
  if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) { fprintf(stderr, "consume failed\n"); return 1; }
  if (bind) { printf("ready\n"); fflush(stdout); }
  double start = 0, deadline = timeout_s ? now() + timeout_s : 0;
  long seen = 0;
  while (seen < count) {
    amqp_envelope_t env;
    amqp_maybe_release_buffers(conn);
    struct timeval tick = {0, 200000};
    amqp_rpc_reply_t r = amqp_consume_message(conn, &env, deadline ? &tick : NULL, 0);
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) {
      if (now() > deadline) break;
      continue;
    }
    if (r.reply_type != AMQP_RESPONSE_NORMAL) { fprintf(stderr, "consume_message failed\n"); return 1; }
    if (seen == 0) start = now();
    seen++;
    if (arrivals) {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      printf("%.*s %lld\n", (int)env.message.properties.correlation_id.len,
             (char *)env.message.properties.correlation_id.bytes, (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    }
    if (!no_ack) amqp_basic_ack(conn, 1, env.delivery_tag, 0);
    amqp_destroy_envelope(&env);
  }
  double seconds = now() - start;
  if (arrivals) fflush(stdout);
  else printf("{\"messages\": %ld, \"seconds\": %.4f, \"per_second\": %.1f}\n", seen, seconds, (seen - 1) / seconds);
  amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
  return 0;
}
