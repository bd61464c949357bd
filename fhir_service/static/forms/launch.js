/*
 * SMART App Launch 2.x, first leg (https://hl7.org/fhir/smart-app-launch/app-launch.html):
 * the EHR opens this page with `launch` and `iss` (EHR launch), or a person opens it with
 * `?iss=<FHIR base>` (standalone launch). fhirclient discovers the EHR's endpoints
 * (.well-known/smart-configuration) and redirects to its authorization endpoint with an
 * authorization code request and a PKCE S256 challenge. The registration values (client id,
 * scopes, redirect URI) are this deployment's settings, read from /forms/{id}/smart-configuration.
 */
(function () {
  'use strict';

  function setStatus(text, kind) {
    var box = document.getElementById('status');
    box.textContent = text;
    box.className = kind || '';
  }

  // EHR launch asks for the EHR's context (`launch`); standalone asks to pick a patient.
  function scopeFor(scope, ehrLaunch) {
    return scope.split(/\s+/).filter(function (s) {
      return s && (ehrLaunch ? s !== 'launch/patient' : s !== 'launch');
    }).join(' ');
  }

  async function launch() {
    var id = document.body.dataset.questionnaireId;
    var params = new URLSearchParams(window.location.search);
    if (!params.get('iss')) {
      setStatus('Open this app from your EHR, or add ?iss=<the FHIR server address> to the ' +
        'address to launch it on its own.', 'error');
      window.__launchFailed = 'no iss';
      return;
    }
    var response = await fetch('/forms/' + encodeURIComponent(id) + '/smart-configuration');
    if (!response.ok) throw new Error('The app settings could not be read (HTTP ' + response.status + ').');
    var config = await response.json();
    await FHIR.oauth2.authorize({
      clientId: config.clientId,
      scope: scopeFor(config.scope, !!params.get('launch')),
      redirectUri: config.redirectUri,
      pkceMode: 'required'
    });
  }

  launch().catch(function (e) {
    setStatus('The app could not connect to the EHR: ' + (e.message || String(e)), 'error');
    window.__launchFailed = e.message || String(e);
  });
})();
