"""Baseline for `make bench`: the seed note's consumer, as written there: pika
BlockingConnection, basic_consume with auto_ack, a callback that decodes the event and
dispatches it (a no-op here). Declares the seed's queue (exclusive, server-named) bound to
ROUTING_KEY on EXCHANGE, prints "ready", consumes COUNT messages and prints
{"messages": N, "seconds": S, "per_second": R}, timed from the first delivery.

    python3 seed_consumer.py --amqp-port Q --exchange E --routing-key K --count N"""
import argparse
import json
import time

import pika

parser = argparse.ArgumentParser()
parser.add_argument("--amqp-port", type=int, required=True)
parser.add_argument("--exchange", default="events")
parser.add_argument("--routing-key", required=True)
parser.add_argument("--count", type=int, required=True)
args = parser.parse_args()

conn = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=args.amqp_port))
channel = conn.channel()
channel.exchange_declare(exchange=args.exchange, exchange_type="direct", durable=True)
queue_name = channel.queue_declare(queue="", exclusive=True).method.queue
channel.queue_bind(exchange=args.exchange, queue=queue_name, routing_key=args.routing_key)
print("ready", flush=True)
state = {"seen": 0, "start": 0.0}


def dispatch(event):
    pass


def callback(ch, method, properties, body):
    if state["seen"] == 0:
        state["start"] = time.perf_counter()
    dispatch((method.routing_key, json.loads(body)))
    state["seen"] += 1
    if state["seen"] >= args.count:
        ch.stop_consuming()


channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
channel.start_consuming()
seconds = time.perf_counter() - state["start"]
print(json.dumps({"messages": state["seen"], "seconds": round(seconds, 4),
                  "per_second": round((state["seen"] - 1) / seconds, 1)}))
conn.close()
