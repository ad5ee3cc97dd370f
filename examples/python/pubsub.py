def handler(event, context):
    # A message from a topic: its payload is logged and answered.
    message = event["data"]
    print("received {} ({}, {})".format(message, event["event-namespace"], event["event-type"]))
    return message
