def handler(event, context):
    # The whole event goes to the log; the caller gets its data back.
    print("event: {}".format(event))
    return event["data"]
