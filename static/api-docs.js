// Starts Swagger UI on the API reference page (/api/v1/docs). A file, not an inline script,
// so the page keeps a CSP without 'unsafe-inline'.
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.SwaggerUIBundle({
    url: root.getAttribute("data-openapi-url"),
    domNode: root,
    deepLinking: true,
    validatorUrl: null, // never ask a third party to validate the document
    tryItOutEnabled: false,
  });
});
