module.exports = {
  // Never returns: it keeps the event loop busy past any timeout.
  foo: function (event, context) {
    for (;;) {}
  },
};
