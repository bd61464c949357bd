/*
 * The assessment page as a SMART on FHIR app (SMART App Launch 2.x; docs/smart-launch.md).
 *
 * Second leg of the launch: the EHR's authorization server redirects here (the form page is the
 * redirect URI) with `code` and `state`; fhirclient exchanges the code (PKCE) and hands back a
 * client bound to the EHR's FHIR server, the patient in context and the token. Then:
 *
 * 1. pre-fill: the patient's data that the questionnaire's population expressions read
 *    (`%Observation`, ...) is read from the EHR with the app's token and sent, as a Bundle, to
 *    this service's `$populate`;
 * 2. review: on submit the page shows what will be written (the QuestionnaireResponse and, when
 *    the clinician ticks the box, the resources `$extract` makes);
 * 3. write back: the QuestionnaireResponse is created on the EHR, then (if confirmed) the
 *    `$extract` transaction is posted there, then patient-view is called with `fhirServer` and
 *    `fhirAuthorization` so the new cards show.
 *
 * Errors from the EHR are shown as plain sentences; the answers stay on the page (and in this
 * browser's storage until written), can be retried, and can be downloaded as JSON.
 * Nothing here is specific to one EHR: every address comes from the launch.
 */
(function () {
  'use strict';

  var CDS_SERVICE = 'muscle-spasm-patient-view';
  var DRAFT_PREFIX = 'assessment-draft:';

  function $(id) { return document.getElementById(id); }

  function launched() {
    var params = new URLSearchParams(window.location.search);
    if (params.get('code') || params.get('error')) return !!params.get('state') || !!params.get('error');
    try { return !!window.sessionStorage.getItem('SMART_KEY'); } catch (e) { return false; }
  }

  function parseAppContext(raw) {
    if (!raw) return {};
    if (typeof raw === 'object') return raw;
    try { return JSON.parse(raw); } catch (e) { return {}; }
  }

  /** Completes the authorization; returns the session or throws a plain-sentence Error. */
  async function connect() {
    var params = new URLSearchParams(window.location.search);
    if (params.get('error')) {
      var why = params.get('error_description') || params.get('error');
      throw new Error('The EHR did not authorize the assessment app (' + why + '). ' +
        'Launch it again from the EHR, or ask the EHR administrator about its permissions.');
    }
    var client;
    try {
      client = await FHIR.oauth2.ready();
    } catch (e) {
      throw new Error('The sign-in with the EHR could not be completed: ' + firstLine(e) +
        '. Launch the app again from the EHR.');
    }
    var token = client.state.tokenResponse || {};
    var patientId = client.patient.id;
    if (!patientId) {
      throw new Error('The EHR did not say which patient this is: launch the app from a ' +
        "patient's chart (or choose a patient when asked).");
    }
    var appContext = parseAppContext(token.appContext);
    return {
      client: client,
      serverUrl: client.state.serverUrl.replace(/\/+$/, ''),
      patientId: patientId,
      token: token,
      scopes: (token.scope || '').split(/\s+/).filter(Boolean),
      appContext: appContext,
      questionnaire: typeof appContext.questionnaire === 'string' ? appContext.questionnaire : null,
      written: {}
    };
  }

  function firstLine(e) {
    return String((e && e.message) || e).split('\n')[0];
  }

  // ---------------------------------------------------------------------------------------
  // Plain sentences for what the EHR answered

  function statusOf(e) {
    return e && (e.status || e.statusCode) ? Number(e.status || e.statusCode) : 0;
  }

  function ehrProblem(e, what) {
    var status = statusOf(e);
    if (status === 401) {
      return 'The EHR no longer accepts this session (it answered 401 to ' + what + '): ' +
        'launch the app again from the EHR. Your answers are kept in this browser and can be ' +
        'downloaded.';
    }
    if (status === 403) {
      return 'The EHR does not allow this app to save ' + what + ' (it answered 403): ask the ' +
        'EHR administrator to grant the app that permission. Your answers are kept and can be ' +
        'downloaded.';
    }
    if (status === 412) {
      return 'The record changed in the EHR while you were working (it answered 412, a version ' +
        'conflict) so ' + what + ' was not saved: try again.';
    }
    if (status >= 500) {
      return 'The EHR had a problem and did not save ' + what + ' (it answered ' + status + '): ' +
        'try again in a moment. Your answers are kept.';
    }
    if (status) {
      return 'The EHR refused ' + what + ' (it answered ' + status + '): ' + firstLine(e) + '.';
    }
    return 'The EHR could not be reached to save ' + what + ': check the connection and try ' +
      'again. Your answers are kept.';
  }

  function canWrite(session, type) {
    return session.scopes.some(function (s) {
      var m = /^(patient|user|system)\/([A-Za-z*]+)\.([a-z*]+)$/.exec(s);
      if (!m || (m[2] !== type && m[2] !== '*')) return false;
      return m[3] === '*' || m[3] === 'write' || m[3].indexOf('c') >= 0;
    });
  }

  // ---------------------------------------------------------------------------------------
  // Pre-fill from the EHR

  /** Resource types the questionnaire's population expressions read (`%Observation`, ...). */
  function typesRead(questionnaire) {
    var found = {};
    JSON.stringify(questionnaire).replace(/%([A-Z][A-Za-z]+)\b/g, function (m, name) {
      found[name] = true;
      return m;
    });
    return Object.keys(found).filter(function (t) { return t !== 'Patient'; }).sort();
  }

  async function readPatientData(session, questionnaire) {
    var client = session.client;
    var entries = [];
    var patient = await client.request('Patient/' + encodeURIComponent(session.patientId));
    entries.push({ resource: patient });
    session.patient = patient;
    var types = typesRead(questionnaire);
    for (var i = 0; i < types.length; i++) {
      var found = await client.request(types[i] + '?patient=' + encodeURIComponent(session.patientId) +
        '&_count=100', { pageLimit: 5, flat: true });
      (found || []).forEach(function (r) { if (r && r.resourceType) entries.push({ resource: r }); });
    }
    return { resourceType: 'Bundle', type: 'collection', entry: entries };
  }

  function patientLabel(patient) {
    var name = (patient && patient.name && patient.name[0]) || {};
    var text = name.text || [].concat(name.given || []).concat(name.family || []).join(' ');
    return (text || 'Patient ' + patient.id) + (patient.birthDate ? ', born ' + patient.birthDate : '');
  }

  // ---------------------------------------------------------------------------------------
  // Drafts: the answers stay in this browser until the EHR has them

  function draftKey(session, form) {
    return DRAFT_PREFIX + session.serverUrl + '|Patient/' + session.patientId + '|' +
      form.state.questionnaire.url;
  }

  function saveDraft(session, form, qr) {
    try { window.localStorage.setItem(draftKey(session, form), JSON.stringify(qr)); } catch (e) { /* full */ }
  }

  function loadDraft(session, form) {
    try { return JSON.parse(window.localStorage.getItem(draftKey(session, form)) || 'null'); } catch (e) { return null; }
  }

  function dropDraft(session, form) {
    try { window.localStorage.removeItem(draftKey(session, form)); } catch (e) { /* ignore */ }
  }

  function download(qr) {
    var blob = new Blob([JSON.stringify(qr, null, 2)], { type: 'application/fhir+json' });
    var link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = 'assessment-' + (qr.authored || 'draft').replace(/[^0-9A-Za-z-]/g, '') + '.json';
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  // ---------------------------------------------------------------------------------------
  // Review and write back

  function uuid() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    return 'xxxxxxxx-xxxx-4xxx-8xxx-xxxxxxxxxxxx'.replace(/x/g, function () {
      return (Math.random() * 16 | 0).toString(16);
    });
  }

  function countAnswers(qr) {
    return (JSON.stringify(qr).match(/"answer"/g) || []).length;
  }

  function showReview(session, form, qr, extracted) {
    var list = $('review-list');
    list.innerHTML = '';
    var first = document.createElement('li');
    first.className = 'review-QuestionnaireResponse';
    first.textContent = 'The completed assessment (' + countAnswers(qr) + ' answers) for ' +
      patientLabel(session.patient) + ', saved to the chart.';
    list.appendChild(first);
    var entries = (extracted.ok && extracted.json && extracted.json.entry) || [];
    $('confirm-extract-row').hidden = !entries.length;
    $('confirm-extract').checked = false;
    if (entries.length) {
      form.showExtracted(extracted.json, $('review-extracted'));
    } else {
      $('review-extracted').innerHTML = '';
    }
    $('review').hidden = false;
    $('write').disabled = false;
  }

  async function preview(session, form) {
    var qr = session.pending || form.currentResponse(session.patientId);
    if (!qr.identifier) {
      qr.identifier = { system: 'urn:ietf:rfc:3986', value: 'urn:uuid:' + uuid() };
    }
    session.pending = qr;
    saveDraft(session, form, qr);
    var extracted = await form.call('POST', '/fhir/QuestionnaireResponse/$extract', qr);
    if (!extracted.ok) {
      form.setStatus('These answers cannot be saved yet: ' + form.outcomeText(extracted), 'error');
      session.pending = null;
      return;
    }
    showReview(session, form, qr, extracted);
    form.setStatus('Check what will be written to the EHR, then choose “Write to the EHR”.');
  }

  /** POST the QuestionnaireResponse; its id comes from the body, else from `Location`. */
  async function writeResponse(session, qr) {
    if (session.written.response) return session.written.response;
    var result = await session.client.request({
      url: 'QuestionnaireResponse',
      method: 'POST',
      body: JSON.stringify(qr),
      headers: { 'Content-Type': 'application/fhir+json' },
      includeResponse: true
    });
    var body = result && result.body && result.body.resourceType ? result.body : null;
    var id = body && body.id;
    var location = result && result.response && result.response.headers.get('location');
    if (!id && location) id = (/QuestionnaireResponse\/([^/?#]+)/.exec(location) || [])[1];
    session.written.response = Object.assign({}, body || qr, id ? { id: id } : {});
    return session.written.response;
  }

  async function writeExtracted(session, form, stored) {
    if (session.written.extracted) return session.written.extracted;
    var extracted = await form.call('POST', '/fhir/QuestionnaireResponse/$extract', stored);
    if (!extracted.ok) throw new Error('The findings could not be prepared: ' + form.outcomeText(extracted));
    var result = await session.client.request({
      url: session.serverUrl,
      method: 'POST',
      body: JSON.stringify(extracted.json),
      headers: { 'Content-Type': 'application/fhir+json' }
    });
    session.written.extracted = result;
    session.written.extractedBundle = extracted.json;
    return result;
  }

  async function recommendations(session, form) {
    var token = session.token;
    var fhirAuthorization = {
      access_token: token.access_token,
      token_type: 'Bearer',
      expires_in: Number(token.expires_in) || 300,
      scope: token.scope || '',
      subject: session.client.state.clientId,
      patient: session.patientId
    };
    var user = session.client.getFhirUser() || token.fhirUser || 'Practitioner/unknown';
    var request = {
      hook: 'patient-view',
      hookInstance: uuid(),
      fhirServer: session.serverUrl,
      fhirAuthorization: fhirAuthorization,
      context: { userId: user, patientId: session.patientId }
    };
    return form.call('POST', '/cds-services/' + CDS_SERVICE, request, 'application/json');
  }

  async function write(session, form) {
    var qr = session.pending;
    if (!qr) return;
    $('write').disabled = true;
    var confirmExtract = $('confirm-extract').checked;
    form.setStatus('Writing to the EHR…');
    var stored;
    try {
      stored = await writeResponse(session, qr);
    } catch (e) {
      window.__lastWriteError = { status: statusOf(e), message: firstLine(e) };
      form.setStatus(ehrProblem(e, 'the assessment'), 'error');
      $('write').disabled = false;
      return;
    }
    if (confirmExtract) {
      try {
        await writeExtracted(session, form, stored);
      } catch (e) {
        window.__lastWriteError = { status: statusOf(e), message: firstLine(e) };
        form.setStatus('The assessment is saved in the chart, but the findings were not: ' +
          ehrProblem(e, 'the findings'), 'error');
        $('write').disabled = false;
        return;
      }
    }
    dropDraft(session, form);
    $('review').hidden = true;
    $('results').hidden = false;
    if (confirmExtract) {
      form.showExtracted(session.written.extracted && session.written.extractedBundle, $('extracted'));
    } else {
      $('extracted').textContent = 'Only the assessment was saved; its findings were not recorded ' +
        'as separate entries.';
    }
    var cds = await recommendations(session, form);
    window.__lastCds = cds;
    if (cds.ok && cds.json) form.showCards(cds.json.cards || []);
    else $('cards').textContent = 'The guideline service did not answer: ' + form.outcomeText(cds);
    var saved = 'Saved to the EHR: the assessment' + (confirmExtract ? ' and its findings' : '') + '.';
    form.setStatus(cds.ok ? saved : saved + ' The recommendations could not be refreshed.',
      cds.ok ? 'ok' : 'error');
    session.pending = null;
    session.written = {};
    window.__written = { response: stored, extracted: confirmExtract };
    window.__submitted = true;
  }

  function guard(form, fn) {
    return function () {
      fn().catch(function (e) {
        form.setStatus(firstLine(e), 'error');
        $('write').disabled = false;
      });
    };
  }

  /** Wires the page for a launched session: banner, pre-fill, review, write back. */
  async function start(session, form) {
    $('patient-panel').hidden = true;
    $('hint').textContent = 'Answers already in the EHR record are filled in. When you save, the ' +
      'assessment is written to the chart and the guideline\'s recommendations are refreshed ' +
      'from the chart.';
    $('ehr-panel').hidden = false;
    $('download').hidden = false;
    window.__smart = {
      patientId: session.patientId,
      serverUrl: session.serverUrl,
      scopes: session.scopes,
      appContext: session.appContext
    };
    var bundle = await readPatientData(session, form.state.source).catch(function (e) {
      form.setStatus('The patient\'s record could not be read from the EHR: ' +
        ehrProblem(e, 'the request').replace(/^The EHR /, 'it ') , 'error');
      return null;
    });
    $('ehr-patient').textContent = session.patient ? patientLabel(session.patient) : 'Patient ' + session.patientId;
    $('ehr-server').textContent = 'Connected to ' + session.serverUrl;
    var warnings = [];
    if (!canWrite(session, 'QuestionnaireResponse')) {
      warnings.push('The EHR did not give this app permission to save the assessment: you can ' +
        'fill it in and download it, but saving to the chart will be refused.');
    }
    $('ehr-warning').textContent = warnings.join(' ');
    $('ehr-warning').hidden = !warnings.length;

    var draft = loadDraft(session, form);
    if (draft) {
      await form.render(draft);
      form.setStatus('Restored the answers that were not yet saved to the EHR.', 'ok');
    } else if (bundle) {
      var result = await form.call('POST', '/fhir/Questionnaire/' + form.questionnaireId() + '/$populate', {
        resourceType: 'Parameters',
        parameter: [
          { name: 'subject', valueReference: { reference: 'Patient/' + session.patientId } },
          { name: 'data', resource: bundle }
        ]
      });
      if (!result.ok) {
        form.setStatus('The form could not be pre-filled: ' + form.outcomeText(result), 'error');
      } else {
        var response = result.json.parameter.find(function (p) { return p.name === 'response'; });
        await form.render(response.resource);
        var answered = countAnswers(response.resource);
        form.setStatus(answered ? 'Pre-filled ' + answered + ' answer(s) from the EHR record.'
          : 'Nothing in the EHR record answers these questions yet.', 'ok');
      }
    }
    $('submit').textContent = 'Review and save to the EHR';
    $('submit').addEventListener('click', guard(form, function () {
      session.pending = null; // what was already written stays written (no duplicates)
      return preview(session, form);
    }));
    $('write').addEventListener('click', guard(form, function () { return write(session, form); }));
    $('back').addEventListener('click', function () {
      $('review').hidden = true;
      session.pending = null;
      form.setStatus('Back to the form: your answers are unchanged.');
    });
    $('download').addEventListener('click', function () {
      download(session.pending || form.currentResponse(session.patientId));
    });
  }

  window.SmartAssessment = { launched: launched, connect: connect, start: start };
})();
