"""Baseline for `make bench`: the seed note's design, as written there: a Flask app whose
POST /prices opens a pika BlockingConnection, declares the exchange, publishes the event,
closes the connection, and answers 202.

    python3 seed_api.py --port P --amqp-port Q"""
import argparse
import json
import logging
import uuid

import pika
from flask import Flask, request

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--amqp-port", type=int, required=True)
parser.add_argument("--exchange", default="events")
args = parser.parse_args()

app = Flask(__name__)
logging.getLogger("werkzeug").setLevel(logging.ERROR)
params = pika.ConnectionParameters(host="127.0.0.1", port=args.amqp_port)


@app.post("/prices")
def prices():
    body = request.get_data()
    json.loads(body)
    operation_id = str(uuid.uuid4())
    conn = pika.BlockingConnection(params)
    channel = conn.channel()
    channel.exchange_declare(exchange=args.exchange, exchange_type="direct", durable=True)
    channel.basic_publish(exchange=args.exchange, routing_key="returns.events.prices_recorded", body=body,
                          properties=pika.BasicProperties(correlation_id=operation_id))
    conn.close()
    return {"operation_id": operation_id}, 202


if __name__ == "__main__":
    print("ready", flush=True)
    app.run(host="127.0.0.1", port=args.port, threaded=True)
