"""Test fixture: a plain-def handler whose behaviour is chosen by the first path segment."""
import sys
import threading
import time

calls = 0


def handler(event, context):
    action = event['extensions']['request'].path.strip('/').split('/')[0]
    return ACTIONS.get(action, echo)(event, context)


def hello(event, context):
    return 'hello world'


def echo(event, context):
    request = event['extensions']['request']
    data = event['data']
    return {
        'event': {key: value for key, value in event.items() if key not in ('data', 'extensions')},
        'data': data.hex() if isinstance(data, bytes) else data,
        'data_type': type(data).__name__,
        'context': context,
        'request': {
            'method': request.method,
            'path': request.path,
            'query_string': request.query_string,
            'query': request.query,
            'url': request.url,
            'json': request.json,
            'body': request.body.read().decode('latin-1'),
            'x_test': request.get_header('X-TEST'),
            'x_test_mapping': request.headers.get('x-Test'),
            'missing_header': request.get_header('X-Missing', 'default'),
        },
    }


def raw_bytes(event, context):
    return b'\x00\x01\xfe\xff'


def nothing(event, context):
    return None


def fail(event, context):
    raise ValueError('fixture failure marker')


def unserializable(event, context):
    return {'value': object()}


def sleep(event, context):
    time.sleep(float(event['extensions']['request'].query.get('s', '1')))
    return 'slept'


def hang(event, context):
    time.sleep(60)  # the tests end the server long before
    return 'woke up'


def spin(event, context):
    deadline = time.monotonic() + 60  # a busy loop, bounded in case the server survives
    while time.monotonic() < deadline:
        pass
    return 'spun'


barriers = {}
barriers_lock = threading.Lock()


def barrier(event, context):
    """Answers only when n calls are in the handler at once (else a 500)."""
    query = event['extensions']['request'].query
    with barriers_lock:
        waiting = barriers.setdefault(query['id'], threading.Barrier(int(query['n'])))
    waiting.wait(float(query.get('wait', '5')))
    return 'met'


def count(event, context):
    global calls
    calls += 1
    return str(calls)


def say(event, context):
    print('printed:', event['extensions']['request'].query['marker'])  # no flush on purpose
    return 'said'


def dependency(event, context):
    import mydep
    return {'value': mydep.VALUE, 'path0': sys.path[0]}


ACTIONS = {
    'hello': hello,
    'bytes': raw_bytes,
    'none': nothing,
    'fail': fail,
    'unserializable': unserializable,
    'sleep': sleep,
    'count': count,
    'hang': hang,
    'spin': spin,
    'barrier': barrier,
    'print': say,
    'dep': dependency,
}
