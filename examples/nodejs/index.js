// Several functions in one archive: the handler picks one of these by name.
module.exports = {
  helloGet: require('./helloget').foo,
  helloWithData: require('./hellowithdata').handler,
};
