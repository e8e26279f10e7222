/* Baseline for `make bench`: the C path the issue compares returns-api with.
 *
 * A libmicrohttpd server (a thread per connection) whose POST /prices hands the body to ONE
 * publisher thread over rabbitmq-c and answers 202 {"operation_id": ...} once that message is
 * done: with --confirm, persistent messages and batched publisher confirms (202 after the
 * broker's basic.ack, `multiple` acks covering several messages); with --no-confirm, transient
 * messages answered once handed to the socket. No validation, no storage: the bare C cost.
 *
 *   publisher --port P --amqp-port Q [--confirm|--no-confirm] [--exchange events]
 *             [--routing-key returns.events.prices_recorded]
 */
#include <microhttpd.h>
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct job {
  char *body;
  size_t len;
  uint64_t tag; /* delivery tag once published */
  int done;
  struct job *next;
} job;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queued = PTHREAD_COND_INITIALIZER;
static pthread_cond_t finished = PTHREAD_COND_INITIALIZER;
static job *head, *tail;
static int confirm = 1;
static const char *exchange = "events", *routing_key = "returns.events.prices_recorded";
static int amqp_port = 5672;
static volatile sig_atomic_t stopping;

static void die_on(amqp_rpc_reply_t r, const char *what) {
  if (r.reply_type != AMQP_RESPONSE_NORMAL) { fprintf(stderr, "%s failed\n", what); exit(1); }
}

static void *publisher(void *arg) {
  (void)arg;
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t *sock = amqp_tcp_socket_new(conn);
  if (amqp_socket_open(sock, "127.0.0.1", amqp_port)) { fprintf(stderr, "connect failed\n"); exit(1); }
  die_on(amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest"), "login");
  amqp_channel_open(conn, 1);
  die_on(amqp_get_rpc_reply(conn), "channel.open");
  amqp_exchange_declare(conn, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes("direct"), 0, 1, 0, 0,
                        amqp_empty_table);
  die_on(amqp_get_rpc_reply(conn), "exchange.declare");
  if (confirm) {
    amqp_confirm_select(conn, 1);
    die_on(amqp_get_rpc_reply(conn), "confirm.select");
  }
  uint64_t next_tag = 1;
  job *batch[4096];
  for (;;) {
    pthread_mutex_lock(&lock);
    while (!head) pthread_cond_wait(&queued, &lock);
    int n = 0;
    while (head && n < 4096) { batch[n++] = head; head = head->next; }
    if (!head) tail = NULL;
    pthread_mutex_unlock(&lock);

    amqp_basic_properties_t props;
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = confirm ? 2 : 1;
    for (int i = 0; i < n; i++) {
      amqp_bytes_t body = {batch[i]->len, batch[i]->body};
      if (amqp_basic_publish(conn, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes(routing_key), 0, 0,
                             &props, body) != AMQP_STATUS_OK) { fprintf(stderr, "publish failed\n"); exit(1); }
      batch[i]->tag = next_tag++;
    }
    if (confirm) { /* read acks until the whole batch is confirmed */
      uint64_t last = next_tag - 1, acked = 0;
      while (acked < last) {
        amqp_frame_t frame;
        if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) { fprintf(stderr, "wait failed\n"); exit(1); }
        if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
          amqp_basic_ack_t *ack = frame.payload.method.decoded;
          acked = ack->delivery_tag; /* acks arrive in order; multiple=1 covers everything up to it */
        } else if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
          fprintf(stderr, "nack\n"); exit(1);
        }
        amqp_maybe_release_buffers(conn);
      }
    }
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n; i++) batch[i]->done = 1;
    pthread_cond_broadcast(&finished);
    pthread_mutex_unlock(&lock);
  }
  return NULL;
}

typedef struct { char *buf; size_t len; } upload;

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *data, size_t *size, void **state) {
  (void)cls; (void)version;
  if (strcmp(method, "POST") != 0 || strcmp(url, "/prices") != 0) {
    static const char nf[] = "{\"error\":{\"code\":\"not_found\"}}";
    struct MHD_Response *r = MHD_create_response_from_buffer(sizeof nf - 1, (void *)nf, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret = MHD_queue_response(c, 404, r);
    MHD_destroy_response(r);
    return ret;
  }
  upload *u = *state;
  if (!u) { *state = calloc(1, sizeof(upload)); return MHD_YES; } /* answer on a later call: keep-alive */
  if (*size) {
    u->buf = realloc(u->buf, u->len + *size);
    memcpy(u->buf + u->len, data, *size);
    u->len += *size;
    *size = 0;
    return MHD_YES;
  }
  job j = {u->buf, u->len, 0, 0, NULL};
  pthread_mutex_lock(&lock);
  if (tail) tail->next = &j; else head = &j;
  tail = &j;
  pthread_cond_signal(&queued);
  while (!j.done) pthread_cond_wait(&finished, &lock);
  pthread_mutex_unlock(&lock);
  char reply[96];
  static uint64_t counter;
  int n = snprintf(reply, sizeof reply, "{\"operation_id\":\"00000000-0000-4000-8000-%012llx\"}",
                   (unsigned long long)__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
  struct MHD_Response *r = MHD_create_response_from_buffer((size_t)n, reply, MHD_RESPMEM_MUST_COPY);
  MHD_add_response_header(r, "Content-Type", "application/json");
  enum MHD_Result ret = MHD_queue_response(c, 202, r);
  MHD_destroy_response(r);
  return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **state, enum MHD_RequestTerminationCode t) {
  (void)cls; (void)c; (void)t;
  upload *u = *state;
  if (u) { free(u->buf); free(u); *state = NULL; }
}

static void on_signal(int s) { (void)s; stopping = 1; }

int main(int argc, char **argv) {
  int port = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--amqp-port") && i + 1 < argc) amqp_port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--confirm")) confirm = 1;
    else if (!strcmp(argv[i], "--no-confirm")) confirm = 0;
    else if (!strcmp(argv[i], "--exchange") && i + 1 < argc) exchange = argv[++i];
    else if (!strcmp(argv[i], "--routing-key") && i + 1 < argc) routing_key = argv[++i];
    else { fprintf(stderr, "usage: publisher --port P --amqp-port Q [--confirm|--no-confirm]\n"); return 2; }
  }
  pthread_t t;
  pthread_create(&t, NULL, publisher, NULL);
  struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD,
                                          (uint16_t)port, NULL, NULL, handle, NULL,
                                          MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
                                          MHD_OPTION_CONNECTION_LIMIT, 1000, MHD_OPTION_END);
  if (!d) { fprintf(stderr, "MHD_start_daemon failed\n"); return 1; }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  printf("ready\n");
  fflush(stdout);
  while (!stopping) pause();
  MHD_stop_daemon(d);
  return 0;
}
