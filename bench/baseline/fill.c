/* Helper of `make bench`: publishes COUNT event messages (as the project's publishers write
 * them: a UUID message_id, type, app_id, content type, schema_version header) to EXCHANGE with
 * ROUTING_KEY, as fast as rabbitmq-c allows, without confirms; --persistent marks them
 * delivery mode 2. Ends with a round trip (queue.declare passive of nothing) so every message
 * has reached the broker when it exits.
 *
 *   fill --amqp-port Q --exchange E --routing-key K --count N [--persistent]
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  int port = 5672, persistent = 0;
  long count = 0;
  const char *exchange = "events", *key = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--amqp-port") && i + 1 < argc) port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--exchange") && i + 1 < argc) exchange = argv[++i];
    else if (!strcmp(argv[i], "--routing-key") && i + 1 < argc) key = argv[++i];
    else if (!strcmp(argv[i], "--count") && i + 1 < argc) count = atol(argv[++i]);
    else if (!strcmp(argv[i], "--persistent")) persistent = 1;
    else { fprintf(stderr, "usage: fill --amqp-port Q --exchange E --routing-key K --count N [--persistent]\n"); return 2; }
  }
  if (!key || count <= 0) return 2;
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t *sock = amqp_tcp_socket_new(conn);
  if (amqp_socket_open(sock, "127.0.0.1", port)) { fprintf(stderr, "connect failed\n"); return 1; }
  if (amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest").reply_type != AMQP_RESPONSE_NORMAL)
    return 1;
  amqp_channel_open(conn, 1);
  amqp_get_rpc_reply(conn);
  amqp_table_entry_t header = {amqp_cstring_bytes("schema_version"), {AMQP_FIELD_KIND_I64, {.i64 = 1}}};
  amqp_basic_properties_t props;
  props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
                 AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
                 AMQP_BASIC_HEADERS_FLAG;
  props.content_type = amqp_cstring_bytes("application/json");
  props.delivery_mode = persistent ? 2 : 1;
  props.type = amqp_cstring_bytes(strrchr(key, '.') ? strrchr(key, '.') + 1 : key);
  props.app_id = amqp_cstring_bytes("bench");
  props.headers.num_entries = 1;
  props.headers.entries = &header;
  char id[48], body[64];
  for (long n = 0; n < count; n++) {
    snprintf(id, sizeof id, "00000000-0000-4000-8000-%012lx", n + 1);
    props.message_id = amqp_cstring_bytes(id);
    props.correlation_id = amqp_cstring_bytes(id);
    int len = snprintf(body, sizeof body, "{\"n\":%ld}", n);
    amqp_bytes_t b = {(size_t)len, body};
    if (amqp_basic_publish(conn, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes(key), 0, 0, &props, b)) {
      fprintf(stderr, "publish failed\n");
      return 1;
    }
  }
  /* A synchronous call: the broker has read everything before it answers. */
  amqp_exchange_declare(conn, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes("direct"), 1, 0, 0, 0,
                        amqp_empty_table);
  amqp_get_rpc_reply(conn);
  amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
  return 0;
}
