def foo(event, context):
    # Never returns: the runtime answers 408 once the function's timeout has passed.
    while True:
        pass
